"""`doctor`'s checks (pure): facts in, ok/warn/fail with the next command out."""

from __future__ import annotations

from prefectstack.cli.doctor import (
    DAY,
    EXIT_CLEAN,
    EXIT_FAIL,
    EXIT_WARN,
    GIB,
    Cert,
    Check,
    FileMode,
    Key,
    Port,
    check_certificates,
    check_dependencies,
    check_disk,
    check_keys,
    check_logs,
    check_ports,
    check_secrets,
    check_services,
    check_state_dir,
    exit_code,
    log_problems,
)

NOW = 1_800_000_000.0


def test_ports_must_be_free_when_stopped_and_bound_when_running() -> None:
    held = [Port("postgres", 5432, free=False, holder="pid 7 (postgres)"),
            Port("redis", 6379, True)]
    stopped = check_ports(held, running=False)
    assert stopped.status == "fail" and "pid 7" in stopped.details[0] and stopped.next
    running = check_ports(held, running=True)
    assert running.status == "fail" and "redis" in running.details[0]
    assert "prefectstack logs" in running.next
    assert check_ports([Port("redis", 6379, True)], running=False).status == "ok"


def test_state_dir_writable_by_others_fails() -> None:
    assert check_state_dir(None).status == "ok"
    assert check_state_dir(FileMode("/s", 0o40700)).status == "ok"
    loose = check_state_dir(FileMode("/s", 0o40777))
    assert loose.status == "fail" and loose.next == "chmod go-w /s"


def test_secret_files_must_be_0600() -> None:
    assert check_secrets([]).status == "ok"
    assert check_secrets([FileMode("/s/secrets.json", 0o100600)]).status == "ok"
    loose = check_secrets([FileMode("/s/secrets.json", 0o100644)])
    assert loose.status == "fail" and loose.next == "chmod 600 /s/secrets.json"
    assert "0644" in loose.details[0]


def test_disk_space_thresholds() -> None:
    assert check_disk(50 * GIB, 100 * GIB).status == "ok"
    assert check_disk(GIB // 2, 100 * GIB).status == "warn"
    assert check_disk(2 * GIB, 100 * GIB).status == "warn"  # under 5 %
    assert check_disk(GIB // 10, 100 * GIB).status == "fail"


def test_dependency_drift_names_the_packages_and_the_fix() -> None:
    drift = check_dependencies(["prefect: locked 3.8.8, installed 3.9.0"], lock_found=True)
    assert drift.status == "fail" and "prefect" in drift.details[0]
    assert drift.next == "pip install -r requirements.lock"
    assert check_dependencies([], lock_found=True).status == "ok"
    assert check_dependencies([], lock_found=False).status == "ok"


def test_services_from_the_status_snapshot() -> None:
    assert check_services({"health": "stopped"}).status == "ok"
    assert check_services({"health": "healthy", "services": []}).status == "ok"
    degraded = check_services({"health": "degraded", "services": [
        {"name": "api-1", "state": "ready", "healthy": True},
        {"name": "worker-1", "state": "backoff", "healthy": None, "detail": "restart 3"}]})
    assert degraded.status == "warn" and degraded.details == ("worker-1: backoff (restart 3)",)
    assert degraded.next == "prefectstack logs worker-1"
    assert check_services({"health": "failed", "services": []}).status == "fail"
    stale = check_services({"health": "stale", "services": []})
    assert stale.status == "fail" and "prefectstack down" in stale.next


def test_log_problems_are_errors_and_tracebacks_but_not_benign_races() -> None:
    text = "\n".join([
        "12:00:00.000 | INFO    | prefect - fine",
        "12:00:01.000 | ERROR   | prefect.server - loop failed",
        "Traceback (most recent call last):",
        "2026-11-29 12:00:02.000 UTC [12] ERROR:  duplicate key value violates unique "
        "constraint \"uq_work_pool__name\"",
    ])
    found = log_problems(text)
    assert len(found) == 2 and "loop failed" in found[0]
    check = check_logs({"services": found, "api-1": []})
    assert check.status == "warn" and check.next == "prefectstack logs services"
    assert check_logs({"api-1": []}).status == "ok"


def test_certificates_expired_or_expiring() -> None:
    ca = Cert("/edge/root.crt", NOW + 3650 * DAY, is_ca=True)
    leaf = Cert("/edge/localhost.crt", NOW - DAY, is_ca=False)
    assert check_certificates([], NOW, running=True).status == "ok"
    assert check_certificates([ca], NOW, running=True).status == "ok"
    # Caddy renews an expired leaf when it starts: a problem only while it runs.
    assert check_certificates([ca, leaf], NOW, running=False).status == "ok"
    assert check_certificates([ca, leaf], NOW, running=True).status == "fail"
    soon = check_certificates([Cert("/edge/root.crt", NOW + 10 * DAY, True)], NOW, True)
    assert soon.status == "warn" and "10 days" in soon.details[0]
    dead_ca = check_certificates([Cert("/edge/root.crt", NOW - 1, True)], NOW, False)
    assert dead_ca.status == "fail" and dead_ca.next


def test_api_keys_expiring_within_a_week_warn() -> None:
    keys = [Key("pfs_a", "ci", NOW + 2 * DAY, revoked=False),
            Key("pfs_b", "old", NOW + 2 * DAY, revoked=True),
            Key("pfs_c", "forever", None, revoked=False),
            Key("pfs_d", "gone", NOW - DAY, revoked=False)]
    check = check_keys(keys, NOW)
    assert check.status == "warn" and check.details == ("pfs_a (ci) expires in 2.0 days",)
    assert "keys create" in check.next
    assert check_keys(keys[1:], NOW).status == "ok"


def test_exit_code_is_the_worst_status() -> None:
    ok, warn, fail = (Check("x", s, "") for s in ("ok", "warn", "fail"))  # type: ignore[arg-type]
    assert exit_code([ok]) == EXIT_CLEAN
    assert exit_code([ok, warn]) == EXIT_WARN
    assert exit_code([warn, fail, ok]) == EXIT_FAIL
