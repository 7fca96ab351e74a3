"""Make this machine's local Python packages reachable from a ``docker build``.

pip on the host may be configured (``pip config list``: ``find-links``, ``index-url``,
``extra-index-url``) with local folders: flat folders of wheels and ``file://`` "simple"
indexes. A container cannot read those paths, so this script gathers every distribution file
they hold into ONE flat folder of symbolic links (``OUT``), which ``tools/docker_env.sh`` serves
over HTTP on 127.0.0.1 for the build (``docker build --network host``). The folder is handed to
pip as ``--find-links``: pip prefers find-links files over an index's file of the same version, so
the heavy wheels (torch and the CUDA libraries) come from this disk instead of the network, exactly
as on the host, while everything else still comes from PyPI.

Prints the pip options the build should add besides ``--find-links``: remote indexes and
find-links pages of the host configuration (passed through) and its ``default-timeout``.

    python3 tools/local_wheels.py OUT
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2")
CONFIG_LINE = re.compile(r"^[\w:-]*\.(find-links|index-url|extra-index-url|default-timeout)='(.*)'$")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def pip_config() -> dict[str, list[str]]:
    """{option: values} of the host's pip configuration (files and PIP_* variables)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    options: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        match = CONFIG_LINE.match(line.strip())
        if match:
            for value in match.group(2).split():
                if value not in options.setdefault(match.group(1), []):
                    options[match.group(1)].append(value)
    return options


def local_path(location: str) -> Path | None:
    """The folder of a local location (a path or a file:// URL); None for a remote URL."""
    if location.startswith("file:"):
        return Path(url2pathname(urlsplit(location).path))
    if "://" not in location:
        return Path(location)
    return None


def flat_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(DIST_SUFFIXES))


def index_files(root: Path) -> list[Path]:
    """The distribution files a local "simple" index links to (``root/<project>/index.html``)."""
    files: list[Path] = []
    for page in sorted(root.glob("*/index.html")):
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        for href in parser.hrefs:
            target = urljoin(page.as_uri(), href.split("#", 1)[0])
            if target.startswith("file:"):
                path = Path(unquote(urlsplit(target).path))
                if path.name.endswith(DIST_SUFFIXES) and path.is_file():
                    files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to (re)create with links to the local distributions")
    args = parser.parse_args(argv)

    options = pip_config()
    files: list[Path] = []
    passthrough: list[str] = []
    for location in options.get("find-links", []):
        path = local_path(location)
        if path is None:
            passthrough += ["--find-links", location]
        elif path.is_dir():
            files += flat_files(path)
    for key in ("index-url", "extra-index-url"):
        for location in options.get(key, []):
            path = local_path(location)
            if path is None:
                if location.rstrip("/") != "https://pypi.org/simple":
                    passthrough += ["--extra-index-url", location]
            elif path.is_dir():
                files += index_files(path)
    if options.get("default-timeout"):
        passthrough += ["--default-timeout", options["default-timeout"][0]]

    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in files:
        link = tmp / path.name
        if not link.exists():  # the first source of a file name wins, as in pip's own order
            os.symlink(path.resolve(), link)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    count = sum(1 for _ in args.out.iterdir())
    print(f"local_wheels: {count} local distribution file(s) linked in {args.out}", file=sys.stderr)
    print(shlex.join(passthrough))
    return 0


if __name__ == "__main__":
    sys.exit(main())
