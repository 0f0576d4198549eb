/*
 * Traits of Linux implants. Rules that look at ELF headers need the file's
 * start in the same scan window: they fire on files and on the first chunk of
 * a mapped region, which is where an executable's header lives.
 */
import "elf"

rule Linux_Static_Stripped_Kernel_Thread_Masquerade : linux implant elf
{
    meta:
        description = "statically linked, stripped ELF that carries a kernel-thread name (kworker/ksoftirqd): a user process posing as a kernel thread via prctl(PR_SET_NAME)"
        severity = "high"
        attack_id = "T1036.004"
        author = "snapscope"
    strings:
        $kworker = /kworker\/[0-9]{1,3}:[0-9]{1,3}H?/
        $ksoftirqd = /ksoftirqd\/[0-9]{1,3}/
        $kthreadd = "[kthreadd]"
    condition:
        uint32(0) == 0x464c457f
        and (elf.type == elf.ET_EXEC or elf.type == elf.ET_DYN)
        and not for any i in (0 .. elf.number_of_segments - 1) : (elf.segments[i].type == elf.PT_INTERP)
        and not for any j in (0 .. elf.number_of_sections - 1) : (elf.sections[j].name == ".symtab")
        and any of them
}

rule Linux_Self_Reexec_And_Masquerade : linux implant
{
    meta:
        description = "re-executes itself through /proc/self/exe and carries a kernel-thread name: typical of implants that hide behind a renamed process"
        severity = "medium"
        attack_id = "T1036.004"
        author = "snapscope"
    strings:
        $self = "/proc/self/exe"
        $kworker = /kworker\/[0-9]{1,3}:[0-9]{1,3}H?/
        $ksoftirqd = /ksoftirqd\/[0-9]{1,3}/
    condition:
        $self and ($kworker or $ksoftirqd)
}

rule Linux_Cron_Persistence_Writer : linux persistence
{
    meta:
        description = "ELF that writes a cron entry (a cron.d path and a schedule line): persistence through cron"
        severity = "medium"
        attack_id = "T1053.003"
        author = "snapscope"
    strings:
        $crond = "/etc/cron.d/"
        $spool = "/var/spool/cron/"
        $every_minute = "* * * * * "
        $reboot = "@reboot "
    condition:
        uint32(0) == 0x464c457f and ($crond or $spool) and ($every_minute or $reboot)
}

rule Linux_LD_Preload_Hijack : linux rootkit
{
    meta:
        description = "binary referencing /etc/ld.so.preload together with libc hooking symbols: userland rootkit loader"
        severity = "high"
        attack_id = "T1574.006"
        author = "snapscope"
    strings:
        $preload = "/etc/ld.so.preload"
        $dlsym = "dlsym"
        $readdir = "readdir"
        $hook_next = "RTLD_NEXT"
    condition:
        uint32(0) == 0x464c457f and $preload and 2 of ($dlsym, $readdir, $hook_next)
}

rule Linux_Shell_History_Evasion : linux defense_evasion
{
    meta:
        description = "disables or wipes shell history (HISTFILE=/dev/null, unset HISTFILE, history -c)"
        severity = "medium"
        attack_id = "T1070.003"
        author = "snapscope"
    strings:
        $a = "HISTFILE=/dev/null"
        $b = "unset HISTFILE"
        $c = "export HISTSIZE=0"
        $d = "history -c && "
    condition:
        any of them
}
