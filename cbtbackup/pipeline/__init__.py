"""The pipelines that connect providers to repositories: backup, restore, verify. All concurrency lives here."""
