"""``cbtbackup run JOB.toml`` end to end: real images (one tracked, written through the engine, one written
around any tracker), real hooks, a real webhook server, a real SMTP server, the metrics file, restores."""

from __future__ import annotations

import json
import os
import random
import textwrap
from pathlib import Path

from cbtbackup.engine import TrackedVolume
from cbtbackup.jobs.report import EXIT_NONE, EXIT_NOTIFY_FAILED, EXIT_PARTIAL
from cbtbackup.repo.location import open_repository
from tests.conftest import MakeImage, RunCli
from tests.jobs.conftest import StartSmtp, WebhookServer, free_port

MiB = 1 << 20
KiB = 1 << 10


def write_job(where: Path, body: str) -> Path:
    job = where / "job.toml"
    job.write_text(textwrap.dedent(body))
    return job


def hook_log(tmp_path: Path) -> list[dict[str, str]]:
    """What the logging hooks wrote: one JSON object (the hook's name and facts) per run."""
    log = tmp_path / "hooks.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


LOGGER = textwrap.dedent("""\
    import json, os, sys
    keys = ["CBTBACKUP_HOOK", "CBTBACKUP_JOB", "CBTBACKUP_SOURCE", "CBTBACKUP_CHAIN", "CBTBACKUP_BACKUP_ID",
            "CBTBACKUP_STATUS", "CBTBACKUP_BYTES_READ", "CBTBACKUP_BYTES_STORED", "CBTBACKUP_DURATION",
            "CBTBACKUP_ERROR", "CBTBACKUP_SOURCES_OK", "CBTBACKUP_SOURCES_FAILED"]
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({k: os.environ[k] for k in keys if k in os.environ}) + "\\n")
    """)


def logging_hook(tmp_path: Path) -> str:
    script = tmp_path / "log_hook.py"
    script.write_text(LOGGER)
    return json.dumps(["python3", str(script), str(tmp_path / "hooks.log")])


def scribble(image: Path, rng: random.Random) -> None:
    with TrackedVolume.open(image) as vol:
        for _ in range(12):
            offset = rng.randrange(vol.size - 70_000)
            vol.write(offset, rng.randbytes(rng.choice([4096, 65536])))


def test_two_sources_hooks_webhook_and_metrics_end_to_end(cli: RunCli, make_image: MakeImage, tmp_path: Path,
                                                          webhook: WebhookServer) -> None:
    tracked = make_image(12 * MiB, name="tracked.img")
    plain = make_image(6 * MiB, name="plain.img")
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    assert cli("track", tracked).code == 0
    hook = logging_hook(tmp_path)
    metrics = tmp_path / "textfile" / "nightly.prom"
    metrics.parent.mkdir()
    job = write_job(tmp_path, f"""\
        job = "nightly"
        [repository]
        location = "repo"            # beside the job file
        [retention]
        keep_last = 3
        [verify]
        sample = "100%"
        [hooks]
        before = {hook}
        after = {hook}
        on_failure = {hook}
        [notify]
        on = "always"
        [notify.webhook]
        url = "{webhook.url}"
        headers = {{ Authorization = "Bearer s3cret" }}
        [metrics]
        file = "{metrics}"

        [[sources]]
        path = "tracked.img"
        chain = "db"
        [sources.hooks]
        before = {hook}
        before_snapshot = {hook}
        after_snapshot = {hook}
        after = {hook}

        [[sources]]
        path = "plain.img"
        chain = "plain"
        """)
    rng = random.Random(5)
    images: list[dict[str, bytes]] = []
    ids: list[dict[str, str]] = []
    for run_no in range(5):
        if run_no:
            scribble(tracked, rng)
            with open(plain, "r+b") as f:  # around every tracker: the scan finds it
                f.seek(rng.randrange(6 * MiB - 4096))
                f.write(rng.randbytes(4096))
        result = cli("run", job, "--json")
        assert result.code == 0, result.err
        report = result.json
        assert report["status"] == "success" and report["exit_code"] == 0
        by_chain = {s["chain"]: s for s in report["sources"]}
        assert by_chain["db"]["kind"] == ("full" if run_no == 0 else "incr")
        if run_no:
            assert by_chain["db"]["method"] == "cbt"  # the tracked image's writes came through the engine
            assert by_chain["db"]["bytes_read"] < 2 * MiB
            assert by_chain["plain"]["method"] == "scan"
        assert by_chain["db"]["verified_bytes"] > 0
        images.append({"db": tracked.read_bytes(), "plain": plain.read_bytes()})
        ids.append({c: s["backup_id"] for c, s in by_chain.items()})

    # Retention kept the three newest of each chain; each restores byte-exact.
    listing = cli("list", "-r", repo, "--json").json["backups"]
    for chain in ("db", "plain"):
        kept = [b["id"] for b in listing if b["name"] == chain]
        assert kept == [i[chain] for i in ids[2:]], chain
        for point in (2, 4):
            out = tmp_path / f"{chain}-{point}.img"
            assert cli("restore", "-r", repo, ids[point][chain], out).code == 0
            assert out.read_bytes() == images[point][chain], (chain, point)

    # Hooks ran in order, with the facts; the snapshot hooks bracket the take.
    runs = hook_log(tmp_path)
    last = runs[-6:]
    assert [r["CBTBACKUP_HOOK"] for r in last] == ["before", "before", "before_snapshot", "after_snapshot",
                                                    "after", "after"]
    source_after = last[4]
    assert source_after["CBTBACKUP_CHAIN"] == "db" and source_after["CBTBACKUP_STATUS"] == "success"
    assert source_after["CBTBACKUP_BACKUP_ID"] == ids[4]["db"]
    assert int(source_after["CBTBACKUP_BYTES_READ"]) > 0 and float(source_after["CBTBACKUP_DURATION"]) >= 0
    assert last[2]["CBTBACKUP_STATUS"] == "running" and last[2]["CBTBACKUP_BACKUP_ID"] == ""
    assert (last[5]["CBTBACKUP_STATUS"], last[5]["CBTBACKUP_SOURCES_OK"]) == ("success", "2")
    assert not [r for r in runs if r["CBTBACKUP_HOOK"] == "on_failure"]

    # One webhook post per run, the report as JSON, with the job's header.
    assert len(webhook.posts) == 5
    post = webhook.posts[-1]
    assert post.headers["Authorization"] == "Bearer s3cret" and post.headers["Content-Type"] == "application/json"
    assert post.document["job"] == "nightly" and post.document["status"] == "success"
    assert {s["backup_id"] for s in post.document["sources"]} == set(ids[4].values())

    # The textfile: per chain, what the collector needs; nothing left over from the atomic rename.
    text = metrics.read_text()
    assert os.listdir(metrics.parent) == ["nightly.prom"]
    assert 'cbtbackup_backup_success{chain="db",job="nightly",source="' + str(tracked) + '"} 1.0' in text
    assert 'cbtbackup_job_sources_failed{job="nightly"} 0.0' in text
    stamp = [line for line in text.splitlines()
             if line.startswith('cbtbackup_backup_last_success_timestamp_seconds{chain="plain"')]
    assert len(stamp) == 1 and float(stamp[0].rsplit(" ", 1)[1]) > 1.7e9


def test_partial_and_none_failures_exit_codes_and_on_failure(cli: RunCli, make_image: MakeImage,
                                                             tmp_path: Path, webhook: WebhookServer) -> None:
    good = make_image(2 * MiB, name="good.img")
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    hook = logging_hook(tmp_path)
    job = write_job(tmp_path, f"""\
        [repository]
        location = "{repo}"
        [hooks]
        on_failure = {hook}
        [notify.webhook]
        url = "{webhook.url}"
        [[sources]]
        path = "{good}"
        [[sources]]
        path = "{tmp_path / 'missing.img'}"
        [sources.hooks]
        on_failure = {hook}
        """)
    result = cli("run", job, "--json")
    assert result.code == EXIT_PARTIAL, result.err
    assert result.json["status"] == "partial"
    failed = result.json["sources"][1]
    assert failed["status"] == "failure" and "missing.img" in failed["error"] and failed["backup_id"] is None
    assert "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1].startswith("cbtbackup: error: job job: partial, 1 of 2")
    hooks = hook_log(tmp_path)
    assert [h["CBTBACKUP_HOOK"] for h in hooks] == ["on_failure", "on_failure"]
    assert "missing.img" in hooks[0]["CBTBACKUP_ERROR"] and hooks[1]["CBTBACKUP_STATUS"] == "partial"
    assert [p.document["status"] for p in webhook.posts] == ["partial"]  # on = "failure" is the default

    good.unlink()
    result = cli("run", job, "--json")
    assert result.code == EXIT_NONE and result.json["status"] == "failure"


def test_failing_before_hook_skips_its_source_and_a_hanging_hook_is_killed(
        cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    first, second = make_image(2 * MiB, name="first.img"), make_image(2 * MiB, name="second.img")
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    child = tmp_path / "child.pid"
    job = write_job(tmp_path, f"""\
        [repository]
        location = "{repo}"
        [[sources]]
        path = "{first}"
        chain = "first"
        [sources.hooks]
        before = "echo database not ready; exit 3"
        [[sources]]
        path = "{second}"
        chain = "second"
        [sources.hooks]
        after = "sleep 600 & echo $! > {child}; wait"
        timeout = "1s"
        """)
    result = cli("run", job, "--json")
    assert result.code == EXIT_NONE, result.err
    first_result, second_result = result.json["sources"]
    assert first_result["error"] == "source hook before failed: exited with 3 (database not ready): not backed up"
    assert cli("list", "-r", repo, "--name", "first", "--json").json["backups"] == []
    # The second was backed up, but its after hook hung: killed at its timeout, with its children.
    assert second_result["backup_id"] is not None and second_result["status"] == "failure"
    assert "still running after 1 s: killed" in second_result["error"]
    pid = int(child.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert "hook before of " in result.err and "database not ready" in result.err  # its output, in place


def test_job_before_hook_failure_runs_nothing(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(1 * MiB)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    job = write_job(tmp_path, f"""\
        [repository]
        location = "{repo}"
        [hooks]
        before = "false"
        [[sources]]
        path = "{image}"
        """)
    result = cli("run", job, "--json")
    assert result.code == EXIT_NONE
    assert result.json["error"] == "job hook before failed: exited with 1"
    assert cli("list", "-r", repo, "--json").json["backups"] == []


def test_webhook_down_the_backup_still_succeeds_unless_asked(cli: RunCli, make_image: MakeImage,
                                                            tmp_path: Path, webhook: WebhookServer) -> None:
    image = make_image(1 * MiB)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    down = f"http://127.0.0.1:{free_port()}/hook"
    body = f"""\
        [repository]
        location = "{repo}"
        [notify]
        on = "always"
        FAIL
        [notify.webhook]
        url = "URL"
        retries = 2
        timeout = "2s"
        [[sources]]
        path = "{image}"
        """
    job = write_job(tmp_path, body.replace("FAIL", "").replace("URL", down))
    result = cli("run", job, "--json")
    assert result.code == 0, result.err
    assert result.json["notifications_failed"][0].startswith(f"webhook {down}: ")
    assert "(3 tries)" in result.json["notifications_failed"][0]
    assert "notification failed: webhook" in result.err
    assert len(cli("list", "-r", repo, "--json").json["backups"]) == 1

    job = write_job(tmp_path, body.replace("FAIL", "fail_on_error = true").replace("URL", down))
    assert cli("run", job).code == EXIT_NOTIFY_FAILED

    # A server that fails once and then answers: the retry delivers it.
    webhook.statuses = [503]
    job = write_job(tmp_path, body.replace("FAIL", "fail_on_error = true").replace("URL", webhook.url))
    result = cli("run", job, "--json")
    assert result.code == 0 and result.json["notifications_failed"] == []
    assert len(webhook.posts) == 2 and webhook.posts[0].document == webhook.posts[1].document


def test_email_over_starttls_with_login_and_a_server_that_refuses(
        cli: RunCli, make_image: MakeImage, tmp_path: Path, smtp_server: StartSmtp) -> None:
    image = make_image(1 * MiB, name="mail.img")
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    server = smtp_server(tls=True, user="backup", password="pw-123")
    (tmp_path / "smtp.pw").write_text("pw-123\n")
    body = f"""\
        [repository]
        location = "{repo}"
        [notify]
        on = "always"
        [notify.email]
        host = "{server.host}"
        port = {server.port}
        from = "cbtbackup@host1.example"
        to = ["TO"]
        user = "backup"
        password_file = "smtp.pw"
        ca_file = "{server.ca_file}"
        [[sources]]
        path = "{image}"
        """
    result = cli("run", write_job(tmp_path, body.replace("TO", "ops@example.com")), "--json")
    assert result.code == 0, result.err
    assert result.json["notifications_failed"] == []
    [mail] = server.box.mails
    assert mail.recipients == ["ops@example.com"] and mail.authenticated
    assert "Subject: cbtbackup job job on " in mail.text and ": success (1 of 1 sources backed up)" in mail.text
    assert result.json["sources"][0]["backup_id"] in mail.text

    result = cli("run", write_job(tmp_path, body.replace("TO", "nobody@refused.example")), "--json")
    assert result.code == 0  # the backup is whole; the failed mail is reported
    [failure] = result.json["notifications_failed"]
    assert failure.startswith(f"SMTP {server.host}:{server.port} refused") and "nobody@refused.example" in failure

    (tmp_path / "smtp.pw").write_text("wrong\n")
    result = cli("run", write_job(tmp_path, body.replace("TO", "ops@example.com")), "--json")
    [failure] = result.json["notifications_failed"]
    assert "refused: 535" in failure and "Traceback" not in result.err


def test_full_every_n_backups_and_days(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(2 * MiB)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    job = write_job(tmp_path, f"""\
        [repository]
        location = "{repo}"
        [full]
        every_backups = 3
        [[sources]]
        path = "{image}"
        chain = "weekly"
        """)
    kinds = [cli("run", job, "--json").json["sources"][0]["kind"] for _ in range(7)]
    assert kinds == ["full", "incr", "incr", "full", "incr", "incr", "full"]
    plan = cli("run", job, "--dry-run")
    assert plan.code == 0 and "chain weekly, incr (after " in plan.out
    assert len(cli("list", "-r", repo, "--json").json["backups"]) == 7  # the dry run made nothing

    job = write_job(tmp_path, f"""\
        [repository]
        location = "{repo}"
        [full]
        every_days = 0.0000001  # 8.6 ms: the last full is older
        [[sources]]
        path = "{image}"
        chain = "weekly"
        """)
    plan = cli("run", job, "--dry-run")
    assert "full (the last full is from " in plan.out and "over 1e-07 days ago" in plan.out
    assert cli("run", job, "--json").json["sources"][0]["kind"] == "full"


def test_sample_check_finds_a_damaged_chunk(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(4 * MiB)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    first = cli("full", "-r", repo, image, "--name", "s", "--json")
    assert first.code == 0
    victim = sorted((repo / "chunks").rglob("*"))
    chunk = next(p for p in victim if p.is_file())
    chunk.write_bytes(b"\0" * chunk.stat().st_size)
    job = write_job(tmp_path, f"""\
        [repository]
        location = "{repo}"
        [verify]
        sample = "100%"
        [[sources]]
        path = "{image}"
        chain = "s"
        """)
    result = cli("run", job, "--json")
    assert result.code == EXIT_NONE
    [source] = result.json["sources"]
    assert source["backup_id"] is not None  # the new backup is kept ...
    assert source["error"].startswith(f"sample check of {source['backup_id']}: quarantined")  # ... and reported


def test_verify_unchanged_per_source_and_its_metric(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    """The job key reaches the backup: "0" re-reads nothing, "100%" every block reported unchanged."""
    off, whole = make_image(2 * MiB, name="off.img"), make_image(2 * MiB, name="whole.img")
    repo = tmp_path / "repo"
    metrics = tmp_path / "job.prom"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    for image in (off, whole):
        assert cli("track", image).code == 0
    job = write_job(tmp_path, f"""\
        [repository]
        location = "{repo}"
        [metrics]
        file = "{metrics}"
        [[sources]]
        path = "{off}"
        verify_unchanged = "0"
        [[sources]]
        path = "{whole}"
        verify_unchanged = "100%"
        """)
    assert cli("run", job).code == 0
    for image in (off, whole):
        with TrackedVolume.open(image) as vol:
            vol.write(MiB + 5, b"one block changed")
    result = cli("run", job, "--json")
    assert result.code == 0 and [s["kind"] for s in result.json["sources"]] == ["incr", "incr"]
    assert [s["tracking_mismatches"] for s in result.json["sources"]] == [0, 0]
    repository = open_repository(str(repo))
    sampled = {}
    for source in result.json["sources"]:
        manifest = repository.load_manifest(repository.find(source["backup_id"]))
        assert manifest.method == "cbt"
        sampled[Path(manifest.source).name] = manifest.stats.bytes_sampled_unchanged
    assert sampled == {"off.img": 0, "whole.img": 2 * MiB - 64 * KiB}  # all but the one changed block
    gauges = [float(line.rsplit(" ", 1)[1]) for line in metrics.read_text().splitlines()
              if line.startswith("cbtbackup_backup_tracking_mismatch{")]
    assert gauges == [0.0, 0.0]


def test_full_with_differentials_between(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    """A weekly full and daily differentials: every backup between two fulls has the last full as parent."""
    image = make_image(2 * MiB)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    assert cli("track", image).code == 0
    job = write_job(tmp_path, f"""\
        [repository]
        location = "{repo}"
        [full]
        every_backups = 3
        differentials = true
        [[sources]]
        path = "{image}"
        chain = "weekly"
        """)
    rng = random.Random(28)
    expected = {}
    for _ in range(4):
        result = cli("run", job, "--json")
        assert result.code == 0, result.err
        expected[result.json["sources"][0]["backup_id"]] = image.read_bytes()
        scribble(image, rng)
    plan = cli("run", job, "--dry-run")
    backups = cli("list", "-r", repo, "--json").json["backups"]
    assert [(b["kind"], b["method"]) for b in backups] == [("full", "full"), ("incr", "cbt"), ("incr", "cbt"),
                                                            ("full", "full")]
    assert backups[1]["parent"] == backups[2]["parent"] == backups[0]["id"]
    assert f"incr (a differential since the last full {backups[3]['id']})" in plan.out
    for backup_id, content in expected.items():
        assert cli("restore", "-r", repo, backup_id, tmp_path / backup_id).code == 0
        assert (tmp_path / backup_id).read_bytes() == content


def test_differentials_must_be_true_or_false(cli: RunCli, tmp_path: Path) -> None:
    job = write_job(tmp_path, """\
        [repository]
        location = "/tmp/nowhere"
        [full]
        differentials = "yes"
        [[sources]]
        path = "/tmp/x.img"
        """)
    cli("run", job).assert_one_line_error(2, "full.differentials")
