/*
 * Cryptocurrency miners: pool protocol URLs, miner option names and
 * configuration keys.
 */
rule Miner_Stratum_Pool_Url : miner
{
    meta:
        description = "stratum mining pool URL (stratum+tcp/ssl): coin miner configuration or command line"
        severity = "high"
        attack_id = "T1496"
        author = "snapscope"
    strings:
        $s = /stratum\+(tcp|ssl|tls):\/\/[A-Za-z0-9.\-]{1,253}:[0-9]{2,5}/
    condition:
        $s
}

rule Miner_XMRig_Traits : miner
{
    meta:
        description = "XMRig-style miner: its option names, RandomX and donate-level settings"
        severity = "high"
        attack_id = "T1496"
        author = "snapscope"
    strings:
        $name = "xmrig" nocase
        $donate = "--donate-level"
        $donate_cfg = "\"donate-level\""
        $randomx = "randomx" nocase
        $cpu_max = "--cpu-max-threads-hint"
        $pool_cfg = "\"pools\""
    condition:
        $name and 2 of ($donate, $donate_cfg, $randomx, $cpu_max, $pool_cfg)
}

rule Miner_Stratum_Protocol_Login : miner network
{
    meta:
        description = "stratum JSON-RPC login/subscribe with a wallet: mining traffic in a stream or memory"
        severity = "medium"
        attack_id = "T1496"
        author = "snapscope"
    strings:
        $login = /"method"\s*:\s*"(login|mining\.subscribe|mining\.authorize)"/
        $agent = /"agent"\s*:\s*"[A-Za-z]{2,16}\/[0-9]/
    condition:
        $login and $agent
}
