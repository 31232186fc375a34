"""Records every chunk a repository object fetches (its own method replaced, the repository untouched)."""

from __future__ import annotations

from cbtbackup.repo.repository import Repository


def count_chunk_fetches(repo: Repository) -> list[bytes]:
    """The digests ``repo.get_chunk`` is asked for from now on, in order, repeats included."""
    fetched: list[bytes] = []
    real_get = repo.get_chunk

    def counting_get(digest: bytes) -> bytes:
        fetched.append(digest)
        return real_get(digest)

    repo.get_chunk = counting_get  # type: ignore[method-assign]
    return fetched
