"""Secure XML (shared/DESIGN.md, rules that do not bend): no external entities, no DTD loading,
no network, bounded size, and whatever bytes a spec holds, a clean diagnostic, never a crash.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from weiflow.dag import check_file
from weiflow.errors import Diagnostic
from weiflow.spec import DEFAULT_MAX_SPEC_BYTES

SECRET = "WEIFLOW-TEST-SECRET-7c1e9b04"
NS = "urn:weiflow:pipeline:1"

# A complete, valid spec; {head} goes before the root, {owner} is the owner attribute's value,
# {text} the description's text.
TEMPLATE = """\
{head}<pipeline xmlns="urn:weiflow:pipeline:1" name="demo" owner="{owner}">
  <description>{text}</description>
  <datasets>
    <dataset name="events" uri="file:///data/events/${{ds}}" external="true"/>
    <dataset name="clean" uri="${{storage}}/demo/clean/${{ds}}" retention="ttl:7"/>
  </datasets>
  <node id="prep" engine="spark">
    <module id="read" type="read" dataset="events"/>
    <module id="keep" type="filter" input="read" condition="label IS NOT NULL"/>
    <module id="write" type="write" input="keep" dataset="clean"/>
  </node>
</pipeline>
"""


def spec(head: str = "", owner: str = "ranking", text: str = "demo") -> str:
    return TEMPLATE.format(head=head, owner=owner, text=text)


def _errors(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.severity == "error"]


def _rendered(diagnostics: list[Diagnostic]) -> str:
    return "\n".join(f"{d!s}\n{d!r}" for d in diagnostics)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_template_is_a_valid_spec(tmp_path: Path) -> None:
    """Control: every rejection below is caused by the attack, not by the spec around it."""
    assert check_file(_write(tmp_path / "ok.xml", spec())) == []


# --- XXE --------------------------------------------------------------------------------------


def _xxe_variants(tmp_path: Path) -> dict[str, str]:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    uri = secret.as_uri()
    # The classic error-based exfiltration: a DTD that puts the file's content into a URI.
    evil = tmp_path / "evil.dtd"
    evil.write_text(
        f'<!ENTITY % file SYSTEM "{uri}">\n'
        "<!ENTITY % eval \"<!ENTITY &#x25; error SYSTEM 'file:///nonexistent/%file;'>\">\n"
        "%eval;\n%error;\n",
        encoding="utf-8",
    )
    return {
        "entity-in-text": spec(f'<!DOCTYPE pipeline [ <!ENTITY xxe SYSTEM "{uri}"> ]>\n', text="&xxe;"),
        "entity-in-attribute": spec(f'<!DOCTYPE pipeline [ <!ENTITY xxe SYSTEM "{uri}"> ]>\n', "&xxe;", "&xxe;"),
        "parameter-entity": spec(f'<!DOCTYPE pipeline [ <!ENTITY % ext SYSTEM "{uri}"> %ext; ]>\n'),
        "external-dtd": spec(f'<!DOCTYPE pipeline SYSTEM "{uri}">\n'),
        "error-based-exfiltration": spec(f'<!DOCTYPE pipeline SYSTEM "{evil.as_uri()}">\n'),
    }


XXE = ["entity-in-text", "entity-in-attribute", "parameter-entity", "external-dtd", "error-based-exfiltration"]


@pytest.mark.parametrize("variant", XXE)
def test_xxe_never_leaks_the_secret(tmp_path: Path, variant: str) -> None:
    path = _write(tmp_path / f"{variant}.xml", _xxe_variants(tmp_path)[variant])
    diagnostics = check_file(path)
    assert _errors(diagnostics), "a spec with a DOCTYPE must be rejected"
    assert SECRET not in _rendered(diagnostics)


@pytest.mark.parametrize(
    "variant",
    [
        "entity-in-text",
        "entity-in-attribute",
        "parameter-entity",
        "external-dtd",
        "error-based-exfiltration",
    ],
)
def test_xxe_is_rejected_as_a_doctype(tmp_path: Path, variant: str) -> None:
    path = _write(tmp_path / f"{variant}.xml", _xxe_variants(tmp_path)[variant])
    first = _errors(check_file(path))[0]
    assert "DOCTYPE" in first.message, first.message


def test_cli_never_prints_the_secret(tmp_path: Path) -> None:
    files = [_write(tmp_path / f"{name}.xml", text) for name, text in _xxe_variants(tmp_path).items()]
    env = {k: v for k, v in os.environ.items() if k not in ("WEIFLOW_MAX_SPEC_BYTES", "WEIFLOW_CONFIG")}
    result = subprocess.run(
        [sys.executable, "-m", "weiflow", "validate", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert SECRET not in result.stdout
    assert SECRET not in result.stderr
    assert "Traceback" not in result.stderr
    for path in files:
        assert f"{path}:" in result.stdout, path.name


def _fifo_variants(fifo: Path) -> dict[str, str]:
    uri = fifo.as_uri()
    return {
        "general-entity": spec(f'<!DOCTYPE pipeline [ <!ENTITY xxe SYSTEM "{uri}"> ]>\n', text="&xxe;"),
        "external-dtd": spec(f'<!DOCTYPE pipeline SYSTEM "{uri}">\n'),
        "parameter-entity": spec(f'<!DOCTYPE pipeline [ <!ENTITY % ext SYSTEM "{uri}"> %ext; ]>\n'),
    }


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize(
    "variant",
    [
        "general-entity",
        "external-dtd",
        "parameter-entity",
    ],
)
def test_no_file_named_by_a_spec_is_ever_opened(tmp_path: Path, variant: str) -> None:
    """A FIFO with no writer blocks whoever opens it: a parser that opened it would never return."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    path = _write(tmp_path / "spec.xml", _fifo_variants(fifo)[variant])
    probe = (
        "import sys\nfrom weiflow.dag import check_file\n"
        "errors = [d for d in check_file(sys.argv[1]) if d.is_error]\nprint(len(errors))\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=6, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"check_file blocked: it opened {fifo}, a file the spec's DOCTYPE names")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 1


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A local TCP server that records every connection it gets."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    hits: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    hits.append(conn.recv(4096) or b"<connected>")
                except OSError:
                    hits.append(b"<connected>")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], hits
    stop.set()
    thread.join(5)
    server.close()


def test_no_network_is_touched(tmp_path: Path, listener: tuple[int, list[bytes]]) -> None:
    port, hits = listener
    base = f"http://127.0.0.1:{port}"
    xinclude = spec().replace(
        '<module id="read" type="read" dataset="events"/>',
        '<module id="read" type="read" dataset="events">'
        f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{base}/xi.xml"/></module>',
    )
    schema_location = spec().replace(
        'name="demo"',
        'name="demo" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="{NS} {base}/pipeline.xsd"',
    )
    variants = {
        "external-dtd": spec(f'<!DOCTYPE pipeline SYSTEM "{base}/evil.dtd">\n'),
        "parameter-entity": spec(f'<!DOCTYPE pipeline [ <!ENTITY % ext SYSTEM "{base}/pe.dtd"> %ext; ]>\n'),
        "general-entity": spec(f'<!DOCTYPE pipeline [ <!ENTITY ext SYSTEM "{base}/ge.txt"> ]>\n', text="&ext;"),
    }
    for name, text in variants.items():
        assert _errors(check_file(_write(tmp_path / f"{name}.xml", text))), name
    # Neither XInclude nor xsi:schemaLocation is followed; the spec stays valid as written.
    assert _errors(check_file(_write(tmp_path / "xinclude.xml", xinclude))) == []
    assert _errors(check_file(_write(tmp_path / "schema_location.xml", schema_location))) == []
    time.sleep(0.3)  # let a late connection land before looking
    assert hits == []


# --- entity expansion bombs -----------------------------------------------------------------


def _billion_laughs(in_attribute: bool) -> str:
    lines = ["<!DOCTYPE pipeline [", '  <!ENTITY lol0 "lol">']
    lines += [f'  <!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    lines.append("]>\n")
    return spec("\n".join(lines), owner="&lol9;" if in_attribute else "ranking", text="&lol9;")


def _quadratic_blowup() -> str:
    big = "A" * 50_000
    return spec(f'<!DOCTYPE pipeline [ <!ENTITY a "{big}"> ]>\n', text="&a;" * 10_000)


@pytest.mark.parametrize(
    "text",
    [_billion_laughs(in_attribute=False), _billion_laughs(in_attribute=True), _quadratic_blowup()],
    ids=["billion-laughs-text", "billion-laughs-attribute", "quadratic-blowup"],
)
def test_entity_bombs_are_rejected_quickly(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "bomb.xml", text)
    assert path.stat().st_size < DEFAULT_MAX_SPEC_BYTES  # the size cap is not what stops it
    start = time.perf_counter()
    diagnostics = check_file(path)
    elapsed = time.perf_counter() - start
    assert _errors(diagnostics)
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    assert "lollollol" not in _rendered(diagnostics)


# --- size cap ---------------------------------------------------------------------------------


def _padded(size: int) -> bytes:
    """A valid spec of exactly ``size`` bytes (padded with a trailing comment)."""
    body = spec().encode()
    filler = size - len(body) - len(b"<!---->\n")
    assert filler >= 0
    data = body + b"<!--" + b"x" * filler + b"-->\n"
    assert len(data) == size
    return data


def test_custom_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    path.write_bytes(_padded(3000))
    assert check_file(path) == []  # control: under the default cap it is a good spec
    errors = _errors(check_file(path, max_bytes=2048))
    assert [(d.line, d.col, d.message) for d in errors] == [(1, 1, "spec is larger than the 2,048-byte limit")]
    assert str(errors[0]).startswith(f"{path}:1:1: error: ")
    path.write_bytes(_padded(2048))
    assert check_file(path, max_bytes=2048) == []  # the limit itself is allowed


def test_default_size_cap_is_one_mebibyte(tmp_path: Path) -> None:
    assert DEFAULT_MAX_SPEC_BYTES == 1024 * 1024
    path = tmp_path / "big.xml"
    path.write_bytes(_padded(DEFAULT_MAX_SPEC_BYTES))
    assert check_file(path) == []
    path.write_bytes(_padded(DEFAULT_MAX_SPEC_BYTES + 1))
    errors = _errors(check_file(path))
    assert [d.message for d in errors] == ["spec is larger than the 1,048,576-byte limit"]


def test_huge_file_is_rejected_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.xml"
    with path.open("wb") as handle:
        handle.write(spec().encode())
        handle.truncate(50 * 1024 * 1024)  # sparse: 50 MB on paper, nothing on disk
    start = time.perf_counter()
    errors = _errors(check_file(path))
    elapsed = time.perf_counter() - start
    assert [d.message for d in errors] == ["spec is larger than the 1,048,576-byte limit"]
    assert elapsed < 1.0, f"took {elapsed:.2f}s"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_reader_stops_at_the_cap(tmp_path: Path) -> None:
    """Feed a pipe that never ends: a reader that wanted more than cap+1 bytes would wait forever."""
    fifo = tmp_path / "endless.xml"
    os.mkfifo(fifo)
    done = threading.Event()

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until a reader opens the other end
        try:
            os.write(fd, spec().encode() + b"<!--" + b"x" * 8192)
            done.wait(15)  # keep the pipe open: no EOF while check_file runs
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        errors = _errors(check_file(fifo, max_bytes=2048))
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        if thread.is_alive():  # if check_file never opened the pipe, let the writer's open() return
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(5)
    messages = [d.message for d in errors]
    # Reading up to the cap and refusing is the behaviour today; refusing a non-regular file
    # outright would be fine too. Waiting for the end of the stream is not.
    refused = len(messages) == 1 and messages[0].startswith("cannot read spec")
    assert refused or messages == ["spec is larger than the 2,048-byte limit"], messages
    assert elapsed < 5.0, f"check_file waited {elapsed:.1f}s for more input than the cap"


# --- encodings and garbage ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_get_a_diagnostic(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "garbage.xml"
    path.write_bytes(random.Random(seed).randbytes(4096))
    diagnostics = check_file(path)
    errors = _errors(diagnostics)
    assert errors
    assert all(d.line >= 1 and d.col >= 1 and d.message for d in diagnostics)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 64,
        b"\xff\xfe\x00\x00garbage",
        b"\xef\xbb\xbf",
        b'<?xml version="1.0" encoding="x-no-such-encoding"?>\n<pipeline/>',
        b"<pipeline xmlns='urn:weiflow:pipeline:1' name='\xc3'/>",
        b"<pipeline xmlns='urn:weiflow:pipeline:1' name='demo'>\x01</pipeline>",
    ],
    ids=["nul-bytes", "bom-then-garbage", "bom-only", "unknown-encoding", "truncated-utf8", "control-char"],
)
def test_odd_bytes_get_a_clean_diagnostic(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "odd.xml"
    path.write_bytes(data)
    errors = _errors(check_file(path))
    assert errors
    assert all(d.line >= 1 and d.col >= 1 and d.message for d in errors)


def test_latin1_without_declaration_is_reported_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "latin1.xml"
    path.write_bytes(spec(text="Caf\u00e9").encode("latin-1"))
    errors = _errors(check_file(path))
    assert len(errors) == 1
    assert errors[0].line == 2
    assert errors[0].message.startswith("not well-formed XML: ")


def test_latin1_with_declaration_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "latin1.xml"
    text = spec('<?xml version="1.0" encoding="ISO-8859-1"?>\n', text="Caf\u00e9")
    path.write_bytes(text.encode("latin-1"))
    assert check_file(path) == []


ENCODINGS = [
    ("UTF-16", "utf-16", b""),  # BOM + native order
    ("UTF-16", "utf-16-le", codecs.BOM_UTF16_LE),
    ("UTF-16", "utf-16-be", codecs.BOM_UTF16_BE),
    ("UTF-16BE", "utf-16-be", b""),
    ("UTF-32", "utf-32", b""),
    ("GB18030", "gb18030", b""),
]
ENCODING_IDS = ["utf-16", "utf-16-le-bom", "utf-16-be-bom", "utf-16-be", "utf-32", "gb18030"]


def _encoded(text: str, declared: str, codec: str, bom: bytes) -> bytes:
    return bom + f'<?xml version="1.0" encoding="{declared}"?>\n{text}'.encode(codec)


@pytest.mark.parametrize(("declared", "codec", "bom"), ENCODINGS, ids=ENCODING_IDS)
def test_valid_spec_in_other_encodings(tmp_path: Path, declared: str, codec: str, bom: bytes) -> None:
    path = tmp_path / "spec.xml"
    path.write_bytes(_encoded(spec(owner="排序", text="Café — 微博"), declared, codec, bom))
    assert check_file(path) == []


def test_utf16_without_declaration_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "spec.xml"
    path.write_bytes(spec(text="微博").encode("utf-16"))
    assert check_file(path) == []


def _twin_positions(tmp_path: Path, text: str, declared: str, codec: str, bom: bytes) -> tuple[list, list]:
    utf8 = _write(tmp_path / "utf8.xml", f'<?xml version="1.0" encoding="UTF-8"?>\n{text}')
    other = tmp_path / "other.xml"
    other.write_bytes(_encoded(text, declared, codec, bom))
    return (
        [(d.line, d.col, d.message) for d in _errors(check_file(utf8))],
        [(d.line, d.col, d.message) for d in _errors(check_file(other))],
    )


BROKEN = spec(text="微博 feed").replace('retention="ttl:7"', 'retention="7days"')


@pytest.mark.parametrize(("declared", "codec", "bom"), ENCODINGS, ids=ENCODING_IDS)
def test_errors_point_at_the_same_place_in_any_encoding(tmp_path: Path, declared: str, codec: str, bom: bytes) -> None:
    expected, got = _twin_positions(tmp_path, BROKEN, declared, codec, bom)
    assert expected == [(6, 61, "<dataset>: retention='7days' is not valid")]
    assert got == expected


@pytest.mark.parametrize(
    ("declared", "codec", "bom"),
    [
        pytest.param(*ENCODINGS[0]),
        pytest.param(*ENCODINGS[4]),
        ENCODINGS[5],
    ],
    ids=["utf-16", "utf-32", "gb18030"],
)
def test_tag_in_a_comment_does_not_shift_positions(tmp_path: Path, declared: str, codec: str, bom: bytes) -> None:
    text = "<!-- old: <node id='x'> -->\n" + BROKEN
    expected, got = _twin_positions(tmp_path, text, declared, codec, bom)
    assert expected == [(7, 61, "<dataset>: retention='7days' is not valid")]
    assert got == expected


def test_utf8_bom_does_not_shift_columns(tmp_path: Path) -> None:
    text = spec().replace('owner="ranking"', 'owner="ranking" priority="urgent"')
    plain = _write(tmp_path / "plain.xml", text)
    with_bom = tmp_path / "bom.xml"
    with_bom.write_bytes(codecs.BOM_UTF8 + text.encode())
    expected = [(d.line, d.col, d.message) for d in _errors(check_file(plain))]
    assert expected == [(1, 70, "<pipeline>: priority='urgent' is not one of high, medium, low")]
    assert [(d.line, d.col, d.message) for d in _errors(check_file(with_bom))] == expected
