/*
 * Web shells: request parameters flowing straight into code execution.
 */
rule Webshell_PHP_Request_Exec : webshell php
{
    meta:
        description = "PHP passing a request parameter to eval/system/assert: web shell"
        severity = "critical"
        attack_id = "T1505.003"
        author = "snapscope"
    strings:
        $direct = /(eval|assert|system|shell_exec|passthru|exec|popen|proc_open)\s*\(\s*(base64_decode\s*\(\s*|gzinflate\s*\(\s*|str_rot13\s*\(\s*){0,3}\$_(GET|POST|REQUEST|COOKIE|SERVER\[['"]HTTP_)/ nocase
        $preg_e = /preg_replace\s*\(\s*["'][^"']{1,64}\/e["']\s*,\s*\$_(GET|POST|REQUEST)/ nocase
        $create_function = /create_function\s*\([^)]{0,64}\$_(GET|POST|REQUEST)/ nocase
    condition:
        any of them
}

rule Webshell_JSP_Runtime_Exec : webshell jsp
{
    meta:
        description = "JSP running a request parameter through Runtime.exec: web shell"
        severity = "critical"
        attack_id = "T1505.003"
        author = "snapscope"
    strings:
        $exec = /Runtime\.getRuntime\(\)\.exec\(\s*request\.getParameter\(/
        $pb = /new\s+ProcessBuilder\([^)]{0,64}request\.getParameter\(/
    condition:
        any of them
}
