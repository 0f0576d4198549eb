/*
 * The snapscope lab's own test marker. fixtures/guest/implant.c assembles
 * "SNAPSCOPE-LAB-BEACON-" plus six hex digits at run time and sends it in
 * every beacon line, so it shows up in process memory, physical memory and
 * the reassembled TCP stream, but never as one literal in the binary.
 * The hex part is a class, not a literal, so this file does not match itself.
 */
rule SnapscopeLab_Beacon_Marker : lab beacon
{
    meta:
        description = "snapscope lab test marker (SNAPSCOPE-LAB-BEACON-<hex>) sent by the lab implant; not real malware"
        severity = "high"
        attack_id = "T1071.001"
        author = "snapscope"
    strings:
        $marker = /SNAPSCOPE-LAB-BEACON-[0-9a-fA-F]{4,32}/
    condition:
        $marker
}
