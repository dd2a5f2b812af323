"""`make demo`: embedded services, migrations, an admin user, the base model, a sample corpus
with queries and qrels, a real embedding job and an evaluation, then web + worker + beat
until Ctrl-C, which stops everything this script started."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "scifact-mini"
# The settings' var/ (EMBEDHUB_VAR_DIR moves it): the services the demo starts and stops are
# the ones its web server and worker connect to.
VAR = Path(os.environ.get("EMBEDHUB_VAR_DIR", ROOT / "var"))
for path in (str(ROOT), str(ROOT / "platform")):
    if path not in sys.path:
        sys.path.append(path)
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embedhub.settings.base")
os.environ["PYTHONPATH"] = f"{ROOT / 'platform'}:{ROOT}"


def say(message: str) -> None:
    print(f"\033[1;34m==>\033[0m {message}", flush=True)


def free_port(preferred: int) -> int:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_services() -> bool:
    """Returns whether this script started them (and so must stop them)."""
    from embedhub.core import embedded

    was_running = all(s.running for s in embedded.services_status(VAR))
    for status in embedded.services_start(VAR):
        say(f"{status.name}: {status.url}")
    return not was_running


def admin_user():
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(9)
    user, _ = get_user_model().objects.get_or_create(
        username="admin", defaults={"is_staff": True, "is_superuser": True}
    )
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    token, _ = Token.objects.get_or_create(user=user)
    return user, password, token.key


def sample_zip() -> Path:
    target = VAR / "demo" / "scifact-mini.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(SAMPLE.rglob("*")):
            if file.is_file():
                zf.write(file, f"scifact-mini/{file.relative_to(SAMPLE)}")
    return target


def spawn(name: str, args: list[str], log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_job(job_id: int, label: str):
    from embedhub.jobs.models import Job

    last = None
    while True:
        job = Job.objects.get(pk=job_id)
        line = f"{label}: {job.status} {job.progress_done}/{job.progress_total or '?'} {job.progress_unit}"
        if line != last:
            say(line)
            last = line
        if job.status in Job.TERMINAL:
            if job.status != Job.Status.SUCCEEDED:
                raise SystemExit(f"{label} job {job.pk} {job.status}: {job.error}")
            return job
        time.sleep(1)


def run_sample_jobs(user) -> None:
    from django.core.files import File

    from embedhub.corpora.services import corpus_upload
    from embedhub.evaluation.models import QuerySet
    from embedhub.jobs.submission import job_submit_checked

    with open(sample_zip(), "rb") as fh:
        job = corpus_upload(
            owner=user, uploaded_file=File(fh, name="scifact-mini.zip"), corpus_name="scifact-mini"
        )
    wait_job(job.pk, "ingest")
    corpus = job.corpus
    embed = job_submit_checked(user=user, kind="embed", params={"corpus": corpus.pk})[0]
    wait_job(embed.pk, "embed (all-MiniLM-L6-v2, real model)")
    query_set = QuerySet.objects.filter(corpus=corpus).order_by("-created_at").first()
    if query_set is None:
        say("the sample has no query set; skipping the evaluation")
        return
    params = {"corpus": corpus.pk, "query_set": query_set.pk}
    evaluation = wait_job(
        job_submit_checked(user=user, kind="evaluate", params=params)[0].pk, "evaluate"
    )
    metrics = evaluation.result.get("metrics", {})
    say("evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the demo as cleanly as Ctrl-C
    started_services = start_services()
    import django
    from django.core.management import call_command

    django.setup()
    say("migrating")
    call_command("migrate", verbosity=0)
    call_command("register_model")
    user, password, token = admin_user()
    log_dir = VAR / "demo"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port(int(os.environ.get("PORT", 8000)))
    py = sys.executable
    procs = [
        spawn("web", [py, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"], log_dir),
        spawn(
            "worker",
            [
                py,
                "-m",
                "celery",
                "-A",
                "embedhub",
                "worker",
                "-Q",
                "cpu,gpu",
                "-c",
                "1",
                "--loglevel=INFO",
            ],
            log_dir,
        ),
        spawn(
            "beat",
            [
                py,
                "-m",
                "celery",
                "-A",
                "embedhub",
                "beat",
                "--loglevel=INFO",
                "-S",
                "django_celery_beat.schedulers:DatabaseScheduler",
            ],
            log_dir,
        ),
    ]
    try:
        run_sample_jobs(user)
        print(
            f"\n  Dashboard:  http://127.0.0.1:{port}/\n"
            f"  Admin:      http://127.0.0.1:{port}/admin/  (schedules: Periodic tasks)\n"
            f"  API docs:   http://127.0.0.1:{port}/api/v1/docs/\n"
            f"  Login:      admin / {password}\n"
            f"  API token:  {token}   (curl -H 'Authorization: Token {token}' ...)\n"
            f"  Logs:       {log_dir}/\n\n  Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        say(f"a process exited; see its log in {log_dir}/")
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping web, worker and beat")
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if started_services:
            from embedhub.core import embedded

            say("stopping the embedded services")
            embedded.services_stop(VAR)


if __name__ == "__main__":
    main()
