"""Reading the Netscape bookmark file: the HTML that Firefox, Chrome, Safari, Edge and Pinboard export.

The format is loose HTML, not XML::

    <DL><p>
        <DT><H3 PERSONAL_TOOLBAR_FOLDER="true">Bookmarks bar</H3>
        <DL><p>
            <DT><H3>Reading</H3>
            <DL><p>
                <DT><A HREF="https://example.org/" ADD_DATE="1700000000" TAGS="web,later">Example</A>
                <DD>An optional description, up to the next DT or the end of the list
            </DL><p>
        </DL><p>
    </DL><p>

so it is read with the standard library's forgiving :class:`html.parser.HTMLParser`. Every ``<A>`` is a
link; its tags are its ``TAGS`` attribute (comma-separated) plus the names of the folders it sits in,
except the browsers' own root folders (the ones flagged ``PERSONAL_TOOLBAR_FOLDER`` or
``UNFILED_BOOKMARKS_FOLDER``, like "Bookmarks bar" or "Other Bookmarks").
"""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser

ROOT_FOLDER_FLAGS = ("personal_toolbar_folder", "unfiled_bookmarks_folder")


@dataclass
class Link:
    """One ``<A>`` of the file, as written there (nothing normalized yet)."""

    url: str
    title: str
    tags: list[str]
    folders: list[str]
    line: int
    note: str | None = None


class _BookmarkFileParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[Link] = []
        self._folders: list[str | None] = []  # one entry per open <DL>: the folder it lists, if named
        self._heading: list[str] | None = None  # text of the <H3> being read
        self._heading_is_root = False
        self._next_folder: str | None = None  # the folder the next <DL> opens
        self._link: Link | None = None  # the <A> being read
        self._title: list[str] = []
        self._described: Link | None = None  # the link a <DD> describes
        self._note: list[str] | None = None

    def _end_note(self) -> None:
        if self._described is not None and self._note is not None:
            note = " ".join("".join(self._note).split())
            self._described.note = note or None
        self._note = None
        self._described = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "h3":
            self._end_note()
            self._heading = []
            self._heading_is_root = any(flag in values for flag in ROOT_FOLDER_FLAGS)
        elif tag == "dl":
            self._end_note()
            self._folders.append(self._next_folder)
            self._next_folder = None
        elif tag == "dt":
            self._end_note()
        elif tag == "a":
            self._end_note()
            self._link = Link(
                url=(values.get("href") or "").strip(),
                title="",
                tags=[part for part in (values.get("tags") or "").split(",") if part.strip()],
                folders=[folder for folder in self._folders if folder],
                line=self.getpos()[0],
            )
            self._title = []
        elif tag == "dd" and self._described is not None:
            self._note = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3" and self._heading is not None:
            name = " ".join("".join(self._heading).split())
            self._next_folder = None if self._heading_is_root else (name or None)
            self._heading = None
        elif tag == "dl":
            self._end_note()
            if self._folders:
                self._folders.pop()
        elif tag == "a" and self._link is not None:
            self._link.title = " ".join("".join(self._title).split())
            self.links.append(self._link)
            self._described = self._link
            self._link = None

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            self._title.append(data)
        elif self._heading is not None:
            self._heading.append(data)
        elif self._note is not None:
            self._note.append(data)

    def close(self) -> None:
        super().close()
        self._end_note()


def parse_bookmark_file(html: str) -> list[Link]:
    """Every link in a Netscape bookmark file, in document order."""
    parser = _BookmarkFileParser()
    parser.feed(html)
    parser.close()
    return parser.links
