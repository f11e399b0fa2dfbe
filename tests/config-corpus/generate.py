#!/usr/bin/env python3
"""Writes the malformed-configuration corpus beside this script.

Each case becomes NNN-name.toml; `expected.tsv` says, per file, the line the
error must point at ("-" when the whole file is the problem). Every case is
a configuration error: `check-config` and `run` must exit 78, a reload must
keep the previous configuration, nothing may panic or hang, and the marker
secret below must never appear in any output. Run it again after changing
the cases; the test (tests/config_corpus.rs) reads the files only.
"""
import os

SECRET = "CORPUS-SECRET-7f3a9c"
HERE = os.path.dirname(os.path.abspath(__file__))

DB = '[database]\nurl = "sqlite:///tmp/keywarden-corpus/k.db"\n'

# (name, text, line of the error or None). Lines count from 1.
cases = []


def case(name, text, line):
    cases.append((name, text, line))


# --- TOML syntax -----------------------------------------------------------
case("unclosed-table-header", "[daemon\nlog_level = \"info\"\n", 1)
case("unclosed-string", "[daemon]\nlog_level = \"info\n", 2)
case("missing-equals", "[daemon]\nlog_level \"info\"\n", 2)
case("duplicate-key", "[daemon]\nlog_level = \"info\"\nlog_level = \"debug\"\n", 3)
case("duplicate-table", "[daemon]\n[daemon]\n", 2)
case("bare-value", "[daemon]\nlog_level = info\n", 2)
case("trailing-comma-inline", "[database]\npassword = { file = \"/x\", }\n", 2)
case("bad-escape", "[daemon]\nlog_level = \"in\\qfo\"\n", 2)
case("unterminated-array", "[notifications]\nwindows = [\"30d\", \"7d\"\n", 2)
case("newline-in-inline-table", "[database]\npassword = { file =\n\"/x\" }\n", 2)
case("key-without-value", "[daemon]\nlog_level =\n", 2)
case("garbage-line", "[daemon]\n!!!\n", 2)
case("array-of-tables-conflict", "[daemon]\n[[daemon]]\n", 2)
case("invalid-float", "[keys]\nmax_keys_per_owner = 1.2.3\n", 2)
case("leading-zero-int", "[keys]\nmax_keys_per_owner = 007\n", 2)

# --- unknown sections and keys ----------------------------------------------
case("unknown-section", "[deamon]\nlog_level = \"info\"\n", 1)
case("unknown-daemon-key", "[daemon]\nlog_levle = \"info\"\n", 2)
case("unknown-database-key", DB + "passwd = { file = \"/x\" }\n", 3)
case("unknown-keys-key", "[keys]\nlifetime = \"90d\"\n", 2)
case("unknown-notifications-key", "[notifications]\nsender = \"a@example.com\"\n", 2)
case("unknown-smtp-key", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nsecurity = \"none\"\nhots = \"x\"\n", 6)
case("unknown-permissions-key", "[permissions]\nroot = [\"/tmp\"]\n", 2)
case("unknown-job", "[jobs.expire-key]\nschedule = \"* * * * *\"\n", 1)
case("unknown-job-key", "[jobs.expire-keys]\nschedul = \"* * * * *\"\n", 2)
case("unknown-acme-key", "[acme]\ndirectory_url = \"https://127.0.0.1:14000/dir\"\n", 2)
case("unknown-rule-key", "[permissions]\nroots = [\"/tmp\"]\n[[permissions.rules]]\nname = \"r\"\npaths = [\"x\"]\nmode = \"0600\"\nmodes = \"0600\"\n", 7)
case("top-level-key", "log_level = \"info\"\n", 1)
case("jobs-not-a-table", "jobs = 5\n", 1)

# --- wrong types -------------------------------------------------------------
case("log-level-number", "[daemon]\nlog_level = 3\n", 2)
case("log-level-unknown", "[daemon]\nlog_level = \"loud\"\n", 2)
case("log-target-unknown", "[daemon]\nlog_target = \"syslog\"\n", 2)
case("batch-size-string", "[jobs.expire-keys]\nbatch_size = \"1000\"\n", 2)
case("batch-size-negative", "[jobs.expire-keys]\nbatch_size = -1\n", 2)
case("batch-size-zero", "[jobs.expire-keys]\nbatch_size = 0\n", 2)
case("batch-size-huge", "[jobs.expire-keys]\nbatch_size = 99999999999999\n", 2)
case("enabled-string", "[jobs.expire-keys]\nenabled = \"yes\"\n", 2)
case("windows-not-array", "[notifications]\nwindows = \"30d\"\n", 2)
case("windows-numbers", "[notifications]\nwindows = [30, 7]\n", 2)
case("admin-emails-string", "[notifications]\nadmin_emails = \"ops@example.com\"\n", 2)
case("admin-email-invalid", "[notifications]\nadmin_emails = [\"not an address\"]\n", 2)
case("max-attempts-zero", "[notifications]\nmax_attempts = 0\n", 2)
case("max-attempts-huge", "[notifications]\nmax_attempts = 1000\n", 2)
case("transport-unknown", "[notifications]\ntransport = \"carrier-pigeon\"\n", 2)
case("smtp-missing", "[notifications]\ntransport = \"smtp\"\n", 2)
case("smtp-port-string", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nport = \"25\"\n", 5)
case("smtp-port-too-big", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nport = 70000\n", 5)
case("smtp-pool-zero", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nsecurity = \"none\"\npool_size = 0\n", 6)
case("smtp-plain-remote", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"mail.example.com\"\nsecurity = \"none\"\n", 5)
case("smtp-security-unknown", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nsecurity = \"ssl3\"\n", 5)
case("smtp-password-without-user", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nsecurity = \"none\"\npassword = { env = \"X\" }\n", 6)
case("action-url-javascript", "[notifications]\naction_url = \"javascript:alert(1)\"\n", 2)
case("max-keys-zero", "[keys]\nmax_keys_per_owner = 0\n", 2)
case("argon2-memory-tiny", "[keys.argon2]\nmemory_kib = 8\n", 2)
case("argon2-memory-absurd", "[keys.argon2]\nmemory_kib = 4294967295\n", 2)
case("argon2-iterations-zero", "[keys.argon2]\niterations = 0\n", 2)
case("namespace-bad", "[keys]\nnamespace = \"s k\"\n", 2)

# --- durations ---------------------------------------------------------------
case("duration-bare-number", "[daemon]\nshutdown_timeout = 30\n", 2)
case("duration-words", "[daemon]\nshutdown_timeout = \"30 seconds\"\n", 2)
case("duration-negative", "[daemon]\nshutdown_timeout = \"-30s\"\n", 2)
case("duration-empty", "[daemon]\nshutdown_timeout = \"\"\n", 2)
case("duration-unit-only", "[daemon]\nshutdown_timeout = \"s\"\n", 2)
case("duration-overflow", "[daemon]\nshutdown_timeout = \"99999999999999999999d\"\n", 2)
case("duration-unknown-unit", "[keys]\ndefault_lifetime = \"3 fortnights\"\n", 2)
case("lifetime-over-max", "[keys]\ndefault_lifetime = \"400d\"\nmax_lifetime = \"90d\"\n", 2)
case("grace-min-over-max", "[keys]\ngrace_min = \"10d\"\ngrace_max = \"1d\"\n", 2)
case("retry-base-over-max", "[notifications]\nretry_base = \"2h\"\nretry_max = \"1h\"\n", 2)
case("window-bad", "[notifications]\nwindows = [\"30 days\"]\n", 2)
case("busy-timeout-words", DB + "busy_timeout = \"five seconds\"\n", 3)
case("alert-interval-short", "[permissions]\nalert_interval = \"1s\"\n", 2)
case("fallback-rescan-short", "[permissions]\nfallback_rescan = \"1s\"\n", 2)

# --- cron --------------------------------------------------------------------
case("cron-four-fields", "[jobs.expire-keys]\nschedule = \"* * * *\"\n", 2)
case("cron-seven-fields", "[jobs.expire-keys]\nschedule = \"* * * * * * *\"\n", 2)
case("cron-minute-60", "[jobs.expire-keys]\nschedule = \"60 * * * *\"\n", 2)
case("cron-words", "[jobs.expire-keys]\nschedule = \"every five minutes\"\n", 2)
case("cron-never", "[jobs.expire-keys]\nschedule = \"0 0 31 2 *\"\n", 2)
case("cron-empty", "[jobs.expire-keys]\nschedule = \"\"\n", 2)
case("cron-number", "[jobs.expire-keys]\nschedule = 5\n", 2)

# --- database URLs and secrets -----------------------------------------------
case("url-mysql", "[database]\nurl = \"mysql://root@localhost/kw\"\n", 2)
case("url-garbage", "[database]\nurl = \"not a url\"\n", 2)
case("url-sqlite-empty", "[database]\nurl = \"sqlite://\"\n", 2)
case("url-postgres-no-host", "[database]\nurl = \"postgres:///kw\"\n", 2)
case("url-number", "[database]\nurl = 5432\n", 2)
case("password-plain-string", "[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = \"%s\"\n" % SECRET, 3)
case("password-array", "[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = [\"%s\"]\n" % SECRET, 3)
case("password-number", "[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = 12345678\n", 3)
case("password-value-key", "[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = { value = \"%s\" }\n" % SECRET, 3)
case("password-two-sources", "[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = { file = \"/x\", env = \"Y\" }\n", 3)
case("password-no-source", "[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = {}\n", 3)
case("password-credential-path", "[database]\nurl = \"postgres://kw@127.0.0.1/kw\"\npassword = { credential = \"../etc/shadow\" }\n", 3)
case("password-twice", "[database]\nurl = \"postgres://kw:%s@127.0.0.1/kw\"\npassword = { env = \"X\" }\n" % SECRET, 3)
case("password-query-twice", "[database]\nurl = \"postgres://kw@127.0.0.1/kw?password=%s\"\npassword = { env = \"X\" }\n" % SECRET, 3)
case("smtp-password-plain", "[notifications]\ntransport = \"smtp\"\n[notifications.smtp]\nhost = \"127.0.0.1\"\nsecurity = \"none\"\nusername = \"kw\"\npassword = \"%s\"\n" % SECRET, 7)
case("eab-hmac-plain", "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"mailto:a@example.com\"]\nterms_agreed = true\n[acme.eab]\nkey_id = \"k\"\nhmac_key = \"%s\"\n" % SECRET, 7)
case("eab-hmac-array", "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"mailto:a@example.com\"]\nterms_agreed = true\n[acme.eab]\nkey_id = \"k\"\nhmac_key = [\"%s\"]\n" % SECRET, 7)

# --- permission rules --------------------------------------------------------
PR = "[permissions]\nroots = [\"/tmp\"]\n[[permissions.rules]]\nname = \"r\"\n"
case("rule-mode-number", PR + "paths = [\"x\"]\nmode = 600\n", 6)
case("rule-mode-garbage", PR + "paths = [\"x\"]\nmode = \"rw-------\"\n", 6)
case("rule-mode-too-big", PR + "paths = [\"x\"]\nmode = \"07777777\"\n", 6)
case("rule-no-paths", PR + "mode = \"0600\"\n", 3)
case("rule-bad-glob", PR + "paths = [\"[x\"]\nmode = \"0600\"\n", 3)
case("rule-type-unknown", PR + "paths = [\"x\"]\nmode = \"0600\"\ntype = \"socket-ish\"\n", 7)
case("rule-unknown-user", PR + "paths = [\"x\"]\nmode = \"0600\"\nowner = \"no-such-user-kw\"\n", 3)
case("rules-not-array", "[permissions]\nroots = [\"/tmp\"]\nrules = 5\n", 3)
case("roots-string", "[permissions]\nroots = \"/tmp\"\n", 2)

# --- ACME --------------------------------------------------------------------
CH = "challenge = { type = \"http-01\", webroot = \"/var/www\" }\ncert_file = \"/etc/kw/c.pem\"\nkey_file = \"/etc/kw/k.pem\"\n"
AC = "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"mailto:a@example.com\"]\nterms_agreed = true\n"
case("acme-terms-not-agreed", "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"mailto:a@example.com\"]\nterms_agreed = false\n", 4)
case("acme-contact-not-mailto", "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"a@example.com\"]\nterms_agreed = true\n", 3)
case("acme-account-relative", AC + "account_file = \"acme.json\"\n", 5)
case("cert-without-acme", "[[certificates]]\nname = \"web\"\ndomains = [\"example.com\"]\n" + CH, 1)
case("cert-bad-name", AC + "[[certificates]]\nname = \"we b\"\ndomains = [\"example.com\"]\n" + CH, 6)
case("cert-no-domains", AC + "[[certificates]]\nname = \"web\"\ndomains = []\n" + CH, 7)
case("cert-bad-domain", AC + "[[certificates]]\nname = \"web\"\ndomains = [\"exa mple.com\"]\n" + CH, 6)
case("cert-wildcard-http", AC + "[[certificates]]\nname = \"web\"\ndomains = [\"*.example.com\"]\nchallenge = { type = \"http-01\", listen = \"0.0.0.0:80\" }\ncert_file = \"/etc/kw/c.pem\"\nkey_file = \"/etc/kw/k.pem\"\n", 6)
case("cert-duplicate-name", AC + "[[certificates]]\nname = \"web\"\ndomains = [\"a.example.com\"]\n" + CH + "[[certificates]]\nname = \"web\"\ndomains = [\"b.example.com\"]\n" + CH, 6)
case("cert-hook-relative", AC + "[[certificates]]\nname = \"web\"\ndomains = [\"example.com\"]\n" + CH + "deploy_hook = [\"reload.sh\"]\n", 11)
case("cert-unknown-key", AC + "[[certificates]]\nname = \"web\"\ndomain = [\"example.com\"]\n" + CH, 7)
case("monitor-bad-address", "[[monitor]]\nname = \"m\"\naddress = \"example.com\"\n", 3)

# --- daemon ------------------------------------------------------------------
case("host-name-empty", "[daemon]\nhost_name = \"\"\n", 2)
case("host-name-control", "[daemon]\nhost_name = \"a\\u0007b\"\n", 2)

# --- whole files ---------------------------------------------------------------
case("binary", "\x00\x01\x02\xff\xfe" * 50, None)
case("nul-in-value", "[daemon]\nlog_level = \"in\x00fo\"\n", None)
case("deep-nesting", "a = " + "[" * 5000 + "]" * 5000 + "\n", None)
case("deep-inline-tables", "a = " + "{ b = " * 2000 + "1" + " }" * 2000 + "\n", None)
case("huge-value", "[daemon]\nlog_level = \"" + "x" * 100_000 + "\"\n", 2)
case("many-errors", "[daemon]\n" + "".join("bad%d = 1\n" % i for i in range(2000)), 2)
case("crlf-broken", "[daemon]\r\nlog_level = \"info\r\n", 2)
case("bom-then-garbage", "\ufeff[daemon\n", None)


def main():
    for f in os.listdir(HERE):
        if f.endswith(".toml"):
            os.remove(os.path.join(HERE, f))
    lines = []
    for i, (name, text, line) in enumerate(cases, 1):
        fname = "%03d-%s.toml" % (i, name)
        data = text.encode("utf-8", "surrogateescape")
        with open(os.path.join(HERE, fname), "wb") as out:
            out.write(data)
        lines.append("%s\t%s\n" % (fname, line if line else "-"))
    # Invalid UTF-8, which Python strings cannot hold.
    i = len(cases) + 1
    for name, data, line in [
        ("invalid-utf8", b"[daemon]\nlog_level = \"\xc3\x28\"\n", None),
        ("invalid-utf8-key", b"[daemon]\n\xff\xfe = 1\n", None),
    ]:
        fname = "%03d-%s.toml" % (i, name)
        with open(os.path.join(HERE, fname), "wb") as out:
            out.write(data)
        lines.append("%s\t%s\n" % (fname, line if line else "-"))
        i += 1
    with open(os.path.join(HERE, "expected.tsv"), "w") as out:
        out.write("# file\tline of the error (- for the whole file)\n")
        out.writelines(lines)
    print("%d cases" % (i - 1))


if __name__ == "__main__":
    main()
