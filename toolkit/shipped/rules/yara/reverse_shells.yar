/*
 * Reverse-shell one-liners as they appear in scripts, command lines, process
 * memory and network payloads.
 */
rule Reverse_Shell_Bash_Dev_Tcp : shell reverse_shell
{
    meta:
        description = "bash interactive shell redirected to /dev/tcp: reverse shell"
        severity = "high"
        attack_id = "T1059.004"
        author = "snapscope"
    strings:
        $a = /bash\s+-i\s*>&\s*\/dev\/tcp\/[0-9A-Za-z.\-]{1,253}\/[0-9]{1,5}/
        $b = /\/dev\/tcp\/[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\/[0-9]{1,5}\s*0>&1/
    condition:
        any of them
}

rule Reverse_Shell_Netcat_Exec : shell reverse_shell
{
    meta:
        description = "netcat or socat handing a shell to a remote peer"
        severity = "high"
        attack_id = "T1059.004"
        author = "snapscope"
    strings:
        $nc_e = /\bnc(at)?\s+(-[a-z]+\s+)*-e\s+\/bin\/(ba)?sh/
        $fifo = /mkfifo\s+\/tmp\/[A-Za-z0-9_.]{1,32};\s*(cat|tail -f)\s+\/tmp\/[A-Za-z0-9_.]{1,32}\s*\|\s*\/bin\/(ba)?sh/
        $socat = /socat\s+(tcp|TCP)[^\s]{0,64}\s+exec:['"]?(\/bin\/)?(ba)?sh/
    condition:
        any of them
}

rule Reverse_Shell_Script_Socket_Pty : shell reverse_shell
{
    meta:
        description = "python/perl/php one-liner connecting a socket and spawning a shell"
        severity = "high"
        attack_id = "T1059.006"
        author = "snapscope"
    strings:
        $py_pty = "pty.spawn(\"/bin/"
        $py_dup = /os\.dup2\(\s*s\.fileno\(\)\s*,\s*[012]\s*\)/
        $pl = /socket\(S,PF_INET,SOCK_STREAM,getprotobyname\(["']tcp["']\)\)/
        $php = /fsockopen\(\s*["'][^"']{1,64}["']\s*,\s*[0-9]{1,5}\s*\)\s*;\s*(exec|shell_exec|system|passthru|proc_open)\(/
    condition:
        any of them
}
