"""Telling someone how a job went: a webhook (an HTTP POST of the job's JSON report) and e-mail over SMTP.

Both are bounded: a webhook try waits at most its timeout, failed tries are retried a few times with a short,
growing pause (connection errors, 408, 429 and 5xx only: a 4xx will not get better), and a server that
refuses gives one line. A notification that fails never undoes or fails a backup; it is reported, and
changes the exit status only when the job asks (``notify.fail_on_error``).
"""

from __future__ import annotations

import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any

from cbtbackup import __version__
from cbtbackup.jobs.job_file import Email, Notify, Webhook
from cbtbackup.jobs.report import JobReport
from cbtbackup.repo.secret_sources import password_from_file

RETRY_PAUSE = 0.5  # seconds before the first retry; doubled each time, at most MAX_PAUSE
MAX_PAUSE = 8.0


class NotificationError(Exception):
    """A notification could not be delivered; the message is one line for the log."""


def should_notify(notify: Notify, report: JobReport) -> bool:
    if notify.when == "never":
        return False
    if notify.when == "always":
        return True
    return (report.status == "success") == (notify.when == "success")


def post_webhook(hook: Webhook, document: dict[str, Any]) -> None:
    body = json.dumps(document, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": f"cbtbackup/{__version__}", **hook.headers}
    pause = RETRY_PAUSE
    last = ""
    for attempt in range(hook.retries + 1):
        if attempt:
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
        request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=hook.timeout) as answer:
                answer.read(1 << 16)
                return
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} {e.reason}"
            if e.code < 500 and e.code not in (408, 429):
                break
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            last = str(reason) or type(reason).__name__
    tries = "1 try" if attempt == 0 else f"{attempt + 1} tries"
    raise NotificationError(f"webhook {hook.url}: {last} ({tries})")


def subject_of(report: JobReport) -> str:
    ok, total = len(report.succeeded), len(report.sources)
    return f"cbtbackup job {report.job} on {report.host}: {report.status} ({ok} of {total} sources backed up)"


def body_of(report: JobReport) -> str:
    lines = [report.summary(), ""]
    lines += [s.line() for s in report.sources]
    notes = [n for s in report.sources for n in s.notes] + report.notes
    if notes:
        lines += ["", "Notes:", *(f"  {n}" for n in notes)]
    lines += ["", "The report as JSON:", json.dumps(report.to_json(), indent=1, sort_keys=True)]
    return "\n".join(lines) + "\n"


def send_email(mail: Email, report: JobReport) -> None:
    message = EmailMessage()
    message["Subject"] = subject_of(report)
    message["From"] = mail.sender
    message["To"] = ", ".join(mail.to)
    message.set_content(body_of(report))
    where = f"SMTP {mail.host}:{mail.port}"
    try:
        password = password_from_file(mail.password_file) if mail.password_file else None
        with smtplib.SMTP(mail.host, mail.port, timeout=mail.timeout) as smtp:
            if mail.starttls:
                smtp.starttls(context=ssl.create_default_context(cafile=mail.ca_file))
            if mail.user:
                smtp.login(mail.user, password or "")
            refused = smtp.send_message(message)
    except smtplib.SMTPResponseException as e:
        text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
        raise NotificationError(f"{where} refused: {e.smtp_code} {text}") from None
    except smtplib.SMTPRecipientsRefused as e:
        raise NotificationError(f"{where} refused every recipient: {', '.join(e.recipients)}") from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as e:
        raise NotificationError(f"{where}: {e}") from None
    except Exception as e:  # a password file that cannot be read comes as one of ours
        raise NotificationError(f"{where}: {e}") from None
    if refused:
        raise NotificationError(f"{where} refused {', '.join(refused)}")


def deliver(notify: Notify, report: JobReport) -> list[str]:
    """Send what the job asks for; the one-line failures (none when all went out)."""
    if not should_notify(notify, report):
        return []
    failures = []
    if notify.webhook is not None:
        try:
            post_webhook(notify.webhook, report.to_json())
        except NotificationError as e:
            failures.append(str(e))
    if notify.email is not None:
        try:
            send_email(notify.email, report)
        except NotificationError as e:
            failures.append(str(e))
    return failures
