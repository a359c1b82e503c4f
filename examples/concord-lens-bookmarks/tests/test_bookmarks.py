"""The bookmarks lens, installed next to Concord and exercised through Concord's public API."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import concord_lens_bookmarks
import pytest
from bookmarks_support import GraphQL, make_settings, run_as
from concord_lens_bookmarks import jobs
from concord_lens_bookmarks.netscape import parse_bookmark_file
from sqlalchemy import func, select

from concord_core.api.runtime import Runtime
from concord_core.auth.policy import Visibility
from concord_core.auth.principal import Principal
from concord_core.db.migrate import upgrade
from concord_core.db.models import ArtifactVersion, Event, LensItem
from concord_core.operators.artifacts import add_artifact_version, create_artifact
from concord_core.operators.base import OperationContext
from concord_core.operators.lens_items import create_item, set_item_status
from concord_core.plugins import JobCancelled, JobContext

PACKAGE = Path(concord_lens_bookmarks.__file__).parent

EXPORT = """<!DOCTYPE NETSCAPE-Bookmark-file-1>
<!-- This is an automatically generated file. -->
<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=UTF-8">
<TITLE>Bookmarks</TITLE>
<H1>Bookmarks Menu</H1>
<DL><p>
    <DT><A HREF="https://www.sqlite.org/wal.html" TAGS="databases,SQLite">Write-Ahead Logging</A>
    <DD>How WAL mode works &amp; when to checkpoint
    <DT><A HREF="place:sort=8&amp;maxResults=10">Recent Tags</A>
    <DT><H3 ADD_DATE="1700000000" PERSONAL_TOOLBAR_FOLDER="true">Bookmarks Toolbar</H3>
    <DL><p>
        <DT><A HREF="https://graphql.org/learn/pagination/">Pagination</A>
        <DT><H3>Web Dev</H3>
        <DL><p>
            <DT><A HREF="https://developer.mozilla.org/en-US/docs/Web/HTML" TAGS="docs">MDN: HTML</A>
            <DT><A HREF="https://x.org/?a=1&amp;b=2" TAGS="docs">&lt;script&gt;alert(1)&lt;/script&gt;</A>
        </DL><p>
        <DT><A HREF="https://www.sqlite.org/wal.html">Write-Ahead Logging (again)</A>
        <DT><A HREF="javascript:alert(1)">A bookmarklet</A>
    </DL><p>
</DL><p>
"""

LENS_ITEMS = """
query Items($type: String) {
  lensItems(lensId: "bookmarks", type: $type, first: 100) {
    totalCount
    nodes { id type status version data }
  }
}
"""

IMPORT = """
mutation Import($html: String!) {
  importBookmarks(html: $html) {
    created duplicates unsupported
    items { id lensId type data }
    errors { field code message }
  }
}
"""

STATS = """
query Stats($tag: String) {
  bookmarkStats(tag: $tag) { total untagged tags { tag count } }
}
"""

CREATE = """
mutation Create($data: JSON!, $visibility: Visibility! = PRIVATE) {
  createLensItem(lensId: "bookmarks", type: "bookmark", data: $data, visibility: $visibility) {
    item { id data }
    errors { field code message }
  }
}
"""


def seeds_and_imports(gql: GraphQL) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = gql.run(LENS_ITEMS, {"type": "bookmark"})["lensItems"]["nodes"]
    return nodes


# --- installation and validation -------------------------------------------------------------------


def test_the_lens_is_installed_and_active(gql: GraphQL, runtime: Runtime) -> None:
    lenses = {
        lens["lensId"]: lens
        for lens in gql.run("{ lenses { lensId name version category status source problems { code } } }")[
            "lenses"
        ]
    }
    assert lenses["bookmarks"] == {
        "lensId": "bookmarks",
        "name": "Bookmarks",
        "version": "0.1.0",
        "category": "productivity",
        "status": "active",
        "source": "bookmarks = concord_lens_bookmarks.plugin",
        "problems": [],
    }
    assert lenses["knowledge"]["status"] == "active"  # installing a third-party lens disturbs no other
    # The registry took every hook's result: the job handler, the GraphQL fields.
    assert runtime.lenses.job_handlers()[jobs.BUILD_DIGEST] is jobs.build_digest
    sdl = runtime_sdl(runtime)
    assert "bookmarkStats(tag: String = null): BookmarkStats!" in sdl
    assert "importBookmarks(html: String!): BookmarkImportPayload!" in sdl


def runtime_sdl(runtime: Runtime) -> str:
    from concord_core.api.gql.schema import build_schema

    return build_schema(runtime.lenses).as_str()


def concord(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concord_core.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_concord_lens_validate_passes_with_the_lens_installed(tmp_path: Path) -> None:
    installed = concord("lens", "validate", cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "bookmarks 0.1.0" in installed.stdout
    assert installed.stdout.strip().endswith("0 problem(s)")

    for path in (PACKAGE, PACKAGE / "manifest.json"):  # the lens folder, or its manifest file
        by_path = concord("lens", "validate", str(path), cwd=tmp_path)
        assert by_path.returncode == 0, by_path.stdout + by_path.stderr

    listed = concord("lens", "list", cwd=tmp_path)
    assert listed.returncode == 0
    assert any(line.split()[:3] == ["bookmarks", "0.1.0", "active"] for line in listed.stdout.splitlines())


# --- seeds -----------------------------------------------------------------------------------------


def test_seed_items_exist_in_development_mode(gql: GraphQL) -> None:
    titles = sorted(node["data"]["title"] for node in seeds_and_imports(gql))
    assert titles == ["Learn GraphQL", "Python documentation"]


def test_no_seed_items_in_production(tmp_path: Path) -> None:
    rt = Runtime.open(make_settings(tmp_path, environment="production"))
    upgrade(rt.db)
    rt.start()
    try:
        with rt.db.read() as session:
            assert session.scalar(select(func.count()).select_from(LensItem)) == 0
    finally:
        rt.close()


# --- importBookmarks -------------------------------------------------------------------------------


def test_parser_reads_folders_tags_and_descriptions() -> None:
    links = {link.title: link for link in parse_bookmark_file(EXPORT)}
    wal = links["Write-Ahead Logging"]
    assert (wal.url, wal.tags, wal.folders) == (
        "https://www.sqlite.org/wal.html",
        ["databases", "SQLite"],
        [],
    )
    assert wal.note == "How WAL mode works & when to checkpoint"
    assert links["Pagination"].folders == []  # the browser's toolbar folder is no tag
    assert links["MDN: HTML"].folders == ["Web Dev"]
    assert links["MDN: HTML"].note is None
    assert links["Recent Tags"].url.startswith("place:")


def test_import_creates_bookmark_items_through_the_write_path(gql: GraphQL, runtime: Runtime) -> None:
    result = gql.run(IMPORT, {"html": EXPORT})["importBookmarks"]
    assert result["errors"] == []
    assert (result["created"], result["duplicates"], result["unsupported"]) == (4, 1, 2)
    data = {item["data"]["url"]: item["data"] for item in result["items"]}
    assert data["https://www.sqlite.org/wal.html"] == {
        "url": "https://www.sqlite.org/wal.html",
        "title": "Write-Ahead Logging",
        "tags": ["databases", "sqlite"],
        "note": "How WAL mode works & when to checkpoint",
    }
    assert data["https://developer.mozilla.org/en-US/docs/Web/HTML"]["tags"] == ["docs", "web dev"]
    assert data["https://graphql.org/learn/pagination/"] == {
        "url": "https://graphql.org/learn/pagination/",
        "title": "Pagination",
    }
    assert all(item["lensId"] == "bookmarks" and item["type"] == "bookmark" for item in result["items"])

    listed = {node["id"]: node for node in seeds_and_imports(gql)}
    assert {item["id"] for item in result["items"]} <= set(listed)
    assert len(listed) == 2 + 4
    # Each item went through the kernel's operator: one event and one audit entry apiece.
    with runtime.db.read() as session:
        events = session.scalar(
            select(func.count()).select_from(Event).where(Event.event_type == "LENS_ITEM_CREATED")
        )
    assert events == 2 + 4

    again = gql.run(IMPORT, {"html": EXPORT})["importBookmarks"]
    assert (again["created"], again["duplicates"], again["errors"]) == (0, 5, [])


def test_tags_are_normalized_not_dropped(gql: GraphQL) -> None:
    html = '<DL><p><DT><A HREF="https://de.example.org/" TAGS="Über, Café  Crème ,,LESEN">Deutsch</A></DL>'
    result = gql.run(IMPORT, {"html": html})["importBookmarks"]
    assert result["errors"] == []
    assert result["items"][0]["data"]["tags"] == ["über", "café crème", "lesen"]


def test_an_invalid_link_means_nothing_is_imported(gql: GraphQL) -> None:
    html = (
        '<DL><p><DT><A HREF="https://ok.example.org/">Fine</A>'
        '<DT><A HREF="https://bad.example.org/with space">Spaces are not URLs</A>'
        f'<DT><A HREF="https://long.example.org/{"x" * 2100}">Too long</A></DL>'
    )
    result = gql.run(IMPORT, {"html": html})["importBookmarks"]
    assert result["created"] == 0
    assert {(error["field"], error["code"]) for error in result["errors"]} == {
        ("html.links.1.url", "VALIDATION"),
        ("html.links.2.url", "VALIDATION"),
    }
    assert all(error["message"].startswith("line 1: ") for error in result["errors"])
    assert len(seeds_and_imports(gql)) == 2  # the seeds only


def test_importing_something_that_is_not_a_bookmark_file(gql: GraphQL) -> None:
    result = gql.run(IMPORT, {"html": "<p>hello</p>"})["importBookmarks"]
    assert result["created"] == 0
    assert [(error["field"], error["code"]) for error in result["errors"]] == [("html", "VALIDATION")]


# --- the data type's JSON Schema, through the kernel's createLensItem ------------------------------


def test_create_lens_item_reports_every_violation_with_its_path(gql: GraphQL) -> None:
    bad = {"url": "ftp://files.example.org/", "title": "", "tags": ["ok", "ok", "Not OK!"], "extra": 1}
    result = gql.run(CREATE, {"data": bad})["createLensItem"]
    assert result["item"] is None
    fields = sorted((error["field"], error["code"]) for error in result["errors"])
    assert fields == [
        ("data", "VALIDATION"),  # additionalProperties: extra
        ("data.tags", "VALIDATION"),  # uniqueItems
        ("data.tags.2", "VALIDATION"),  # the tag pattern
        ("data.title", "VALIDATION"),  # minLength
        ("data.url", "VALIDATION"),  # the ^https?:// pattern
    ]
    missing = gql.run(CREATE, {"data": {"note": "no url, no title"}})["createLensItem"]
    assert sorted(error["message"] for error in missing["errors"]) == [
        "'title' is a required property",
        "'url' is a required property",
    ]
    good = gql.run(CREATE, {"data": {"url": "https://example.org/", "title": "Example"}})["createLensItem"]
    assert good["errors"] == []
    assert good["item"]["data"] == {"url": "https://example.org/", "title": "Example"}


# --- bookmarkStats ---------------------------------------------------------------------------------


def add_bookmark(
    ops: OperationContext, url: str, tags: list[str], visibility: Visibility = Visibility.PRIVATE
) -> str:
    data = {"url": url, "title": url, "tags": tags}
    item = create_item(
        ops, {"lens_id": "bookmarks", "item_type": "bookmark", "data": data, "visibility": visibility}
    )
    return item.id


def test_bookmark_stats_counts_by_tag(gql: GraphQL) -> None:
    gql.run(IMPORT, {"html": EXPORT})
    stats = gql.run(STATS)["bookmarkStats"]
    # The seeds (python+docs, graphql+docs) and the import (4 links, one without tags).
    assert stats == {
        "total": 6,
        "untagged": 1,
        "tags": [
            {"tag": "docs", "count": 4},
            {"tag": "web dev", "count": 2},
            {"tag": "databases", "count": 1},
            {"tag": "graphql", "count": 1},
            {"tag": "python", "count": 1},
            {"tag": "sqlite", "count": 1},
        ],
    }
    docs = gql.run(STATS, {"tag": "Docs"})["bookmarkStats"]  # tags are matched as they are stored
    assert (docs["total"], docs["untagged"]) == (4, 0)
    assert docs["tags"][:2] == [{"tag": "docs", "count": 4}, {"tag": "web dev", "count": 2}]
    assert gql.run(STATS, {"tag": "nothing-has-this"})["bookmarkStats"] == {
        "total": 0,
        "untagged": 0,
        "tags": [],
    }
    assert gql.run(STATS, {"tag": "!!!"})["bookmarkStats"]["total"] == 0


def test_bookmark_stats_count_only_what_the_caller_can_read(runtime: Runtime, someone: Principal) -> None:
    owner = runtime.principal_for_user(runtime.local_owner_id or "")
    add_bookmark(runtime.operation_context(owner), "https://private.example.org/", ["secret"])
    add_bookmark(
        runtime.operation_context(owner), "https://public.example.org/", ["shared"], Visibility.PUBLIC
    )
    mine = add_bookmark(runtime.operation_context(someone), "https://mine.example.org/", ["mine"])
    stats = run_as(runtime, someone, STATS)["bookmarkStats"]
    assert stats["total"] == 2
    assert {entry["tag"] for entry in stats["tags"]} == {"shared", "mine"}
    # Others' private bookmarks are not counted, not even by tag ...
    assert run_as(runtime, someone, STATS, tag="secret")["bookmarkStats"]["total"] == 0
    # ... and archived ones are not counted at all.
    set_item_status(
        runtime.operation_context(someone), {"id": mine, "status": "archived", "expected_version": 1}
    )
    assert run_as(runtime, someone, STATS)["bookmarkStats"]["total"] == 1


# --- the bookmarks.build_digest job handler --------------------------------------------------------


class RecordingJobContext:
    """A JobContext good enough to call a handler directly: checkpoints live in a dict, artifacts are
    written with the kernel's artifact operator. (The durable job runtime, with leases, committed
    checkpoints and job-keyed artifacts, is a separate, later issue; this only exercises the handler.)"""

    def __init__(self, operations: OperationContext, job_id: str = "job-1") -> None:
        self._operations = operations
        self._job_id = job_id
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[tuple[str, str], tuple[str, int]] = {}
        self.reports: list[tuple[float, str | None]] = []
        self.cancel_requested = False

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def attempt(self) -> int:
        return 1

    @property
    def operations(self) -> OperationContext:
        return self._operations

    @property
    def checkpoint_state(self) -> dict[str, Any] | None:
        return self.checkpoints.get(self._job_id)

    @property
    def cancelled(self) -> bool:
        return self.cancel_requested

    def checkpoint(self, state: dict[str, Any]) -> None:
        if self.cancel_requested:
            raise JobCancelled(self._job_id)
        self.checkpoints[self._job_id] = dict(state)

    def progress(self, fraction: float, message: str | None = None) -> None:
        if self.cancel_requested:
            raise JobCancelled(self._job_id)
        self.reports.append((fraction, message))

    def write_artifact(
        self,
        *,
        step: str,
        role: str,
        name: str,
        content: bytes | IO[bytes],
        media_type: str,
        label: str = "original",
        artifact_id: str | None = None,
    ) -> tuple[str, int]:
        stream = io.BytesIO(content if isinstance(content, bytes) else content.read())
        spec = {"label": label, "media_type": media_type, "filename": f"{step}-{role}.html"}
        if artifact_id is not None:
            artifact, version = add_artifact_version(
                self._operations, {**spec, "artifact_id": artifact_id}, stream, self._job_id
            )
        else:
            artifact, version = create_artifact(self._operations, {**spec, "name": name}, stream)
        self.artifacts[(step, role)] = (artifact.id, version.version)
        return artifact.id, version.version


def artifact_text(runtime: Runtime, artifact_id: str, version: int) -> str:
    with runtime.db.read() as session:
        row = session.get(ArtifactVersion, (artifact_id, version))
        assert row is not None
        assert row.media_type == "text/html"
        return runtime.store.read_bytes(row.blob_sha256).decode()


def test_build_digest_writes_an_html_artifact(gql: GraphQL, runtime: Runtime, someone: Principal) -> None:
    gql.run(IMPORT, {"html": EXPORT})
    add_bookmark(
        runtime.operation_context(someone), "https://not-yours.example.org/", ["docs"], Visibility.PUBLIC
    )
    owner = runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id or ""))
    ctx = RecordingJobContext(owner)
    handler = runtime.lenses.job_handlers()["bookmarks.build_digest"]
    checked: JobContext = ctx  # the test double satisfies the kernel's protocol

    output = handler(checked, {"tag": "docs"})

    assert output["bookmarks"] == 4  # the owner's docs bookmarks: two seeds, two imported
    assert ctx.checkpoints["job-1"] == output
    assert ctx.reports[-1] == (1.0, "done")
    page = artifact_text(runtime, output["artifactId"], output["version"])
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Bookmarks tagged docs</title>" in page
    assert '<a href="https://docs.python.org/3/">Python documentation</a>' in page
    assert "&mdash; The standard library reference lives here." in page
    assert "&lt;script&gt;" in page and "<script>" not in page  # titles are escaped
    assert 'href="https://x.org/?a=1&amp;b=2"' in page  # and so are URLs
    assert "not-yours.example.org" not in page  # only the job owner's bookmarks
    assert "sqlite.org" not in page  # not tagged docs

    # Resumed after its checkpoint, it returns the same output and writes nothing new.
    assert handler(checked, {"tag": "docs"}) == output
    assert len(ctx.artifacts) == 1

    # Run afresh, it renders byte-identical content (no clock in it), so the store keeps one copy.
    fresh = RecordingJobContext(owner, job_id="job-2")
    again = jobs.build_digest(fresh, {"tag": "docs"})
    with runtime.db.read() as session:
        first = session.get(ArtifactVersion, (output["artifactId"], output["version"]))
        second = session.get(ArtifactVersion, (again["artifactId"], again["version"]))
        assert first is not None and second is not None
        assert first.blob_sha256 == second.blob_sha256


def test_build_digest_of_everything_and_cancellation(runtime: Runtime) -> None:
    owner = runtime.operation_context(runtime.principal_for_user(runtime.local_owner_id or ""))
    ctx = RecordingJobContext(owner)
    output = jobs.build_digest(ctx, {})
    page = artifact_text(runtime, output["artifactId"], output["version"])
    assert output["bookmarks"] == 2
    assert "<h1>Bookmarks</h1>" in page and "2 bookmarks, 3 tags." in page

    cancelled = RecordingJobContext(owner, job_id="job-3")
    cancelled.cancel_requested = True
    with pytest.raises(JobCancelled):
        jobs.build_digest(cancelled, {})
    assert cancelled.artifacts == {}
