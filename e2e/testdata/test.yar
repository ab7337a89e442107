rule vmwatch_test_marker
{
    meta:
        severity = "high"
        description = "a marker compiled into the test helper fakekthread"
    strings:
        $a = "VMWATCH-YARA-TEST-MARKER-51c3"
    condition:
        $a
}

rule linux_banner
{
    meta:
        severity = "info"
    strings:
        $a = "Linux version "
    condition:
        $a
}
