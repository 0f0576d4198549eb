/*
 * The EICAR anti-virus test string: harmless, used to prove a scan path
 * end to end. Backslash is escaped here, so this file does not match itself.
 */
rule EICAR_Test_String : test
{
    meta:
        description = "EICAR anti-virus test string (harmless scanner test)"
        severity = "low"
        author = "snapscope"
    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    condition:
        $eicar
}
