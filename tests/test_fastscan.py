"""The Hyperscan page scanner (proxy/fastscan.py) against the reference pipeline (proxy/content.py).

The proxy scores pages with ``PhraseSet.score_body``: the scanner where
Hyperscan is installed, the reference pipeline (extract the text, normalize,
Aho–Corasick) otherwise and for pages the scanner hands back. Both must agree.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from test_content import CASINO_ES, PORN_ES, SALUD_ES, SEX_ED, THRESHOLD, eval_set

from proxy import content, fastscan
from proxy.content import load_phrases, page_text

pytestmark = pytest.mark.skipif(not fastscan.available(), reason="no Hyperscan wheel here")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    return load_phrases(ROOT / "rules" / "phrases", {"adult", "gambling"})


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("phrases")
    (d / "adult.yaml").write_text(
        textwrap.dedent(
            """\
            category: adult
            phrases:
              porn: 60
              free porn: 50
              pornografía: 70
              nude*: 40
              sexual health: -80
            """
        ),
        encoding="utf-8",
    )
    return load_phrases(d, {"adult"})


@pytest.fixture(scope="module")
def small_py(small):
    """``small`` with the visibility checks in Python (no proxy/_visible.c), as on a machine
    that had no C compiler at install time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastscan, "_visible", None)
        return load_phrases(small_dir(small), {"adult"})


@pytest.fixture(scope="module")
def shipped_py():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastscan, "_visible", None)
        return load_phrases(ROOT / "rules" / "phrases", {"adult", "gambling"})


def fast(ps, html: str) -> set[str] | None:
    """Phrases the scanner sees on a page (None: it hands the page to the reference)."""
    found = ps.fast_matches(html.encode("utf-8"))
    if found is None:
        return None
    return {p.text for i in found for p in ps._entries[i]}


def reference(ps, html: str) -> set[str]:
    found = ps.matches(page_text(html.encode("utf-8"), "text/html"))
    return {p.text for i in found for p in ps._entries[i]}


def test_the_evaluation_set_scores_the_same_both_ways(shipped) -> None:
    rows = eval_set()
    handed_back = 0
    for row in rows:
        body = row["html"].encode("utf-8")
        fast_score = shipped.score_body(body, "text/html")
        ref_score = shipped.score_normalized(page_text(body, "text/html"))
        assert fast_score.totals == ref_score.totals, row["file"]
        assert {c: sorted(h) for c, h in fast_score.hits.items()} == {
            c: sorted(h) for c, h in ref_score.hits.items()
        }, row["file"]
        handed_back += shipped.fast_matches(body) is None
    assert handed_back == 0  # the set has no entity-encoded letters: the scanner did the work


def test_good_context_is_searched_only_when_it_could_change_the_decision(shipped) -> None:
    """With a threshold, a page is either scored in full, or its raising phrases alone stay under
    the threshold and the partial totals bound the full ones from above: same decision."""
    partial = 0
    for row in eval_set():
        body = row["html"].encode("utf-8")
        full = shipped.score_body(body, "text/html")
        quick = shipped.score_body(body, "text/html", threshold=100)
        assert not full.partial
        if quick.partial:
            partial += 1
            assert all(t < 100 for t in quick.totals.values()), row["file"]
            assert all(quick.totals.get(c, 0) >= t for c, t in full.totals.items()), row["file"]
            assert all(h.weight > 0 for hits in quick.hits.values() for h in hits)
        else:
            assert quick == full, row["file"]
    assert 0 < partial < len(eval_set())  # both paths ran


@pytest.mark.parametrize("text", [SEX_ED, SALUD_ES, CASINO_ES, PORN_ES])
def test_hard_cases_agree_with_the_reference(shipped, text) -> None:
    page = f"<html><head><title>t</title></head><body><p>{text}</p></body></html>"
    assert fast(shipped, page) == reference(shipped, page)
    body = page.encode("utf-8")
    blocked = shipped.score_body(body, "text/html").worst()[1] >= THRESHOLD
    assert blocked == (text in (CASINO_ES, PORN_ES))


@pytest.mark.parametrize(
    ("page", "seen"),
    [
        # words as written on real pages: case, accents, punctuation and line breaks between words
        ("<p>FREE PORN!</p>", {"free porn", "porn"}),
        ("<p>free,\n        porn</p>", {"free porn", "porn"}),
        ("<p>PORNOGRAFÍA y pornografia</p>", {"pornografía"}),
        ("<p>“porn”</p><p>¿porn?</p>", {"porn"}),
        ("<p>nudes</p>", {"nude"}),  # a word-beginning phrase
        # whole words only
        ("<p>pornographic Essex pornstar</p>", set()),
        ("<p>sexual health</p>", {"sexual health"}),
        # where nobody reads it
        ("<script>var porn = 1;</script><p>hello</p>", set()),
        ("<style>.porn{}</style><!-- porn --><p>hello</p>", set()),
        ('<a href="/porn/">videos</a>', set()),
        ('<div class="nude"></div>', set()),
        # where people do read it
        ('<img src="x.jpg" alt="free porn">', {"free porn", "porn"}),
        ('<head><meta name="description" content="porn"></head>', {"porn"}),
        ("<title>porn</title>", {"porn"}),
        # first seen hidden, then visible: found on the second pass
        ('<script>x="porn"</script><a href="/porn">x</a><p>porn</p>', {"porn"}),
    ],
)
def test_visible_text_only(small, small_py, page, seen) -> None:
    assert fast(small, page) == seen
    assert fast(small_py, page) == seen
    assert reference(small, page) == seen


def test_the_text_extractor_is_built_where_a_compiler_is() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the visibility checks run in Python")
    assert fastscan._visible is not None  # CI installs gcc: the fast path is the one tested


@pytest.mark.skipif(fastscan._visible is None, reason="proxy/_visible.c not built")
@pytest.mark.parametrize(
    ("page", "text"),
    [
        (b"<p>Free <b>porn</b> now</p>", b"<Free <porn< now<"),
        (b"a<script>porn</script>b<SCRIPT>x</SCRIPT>c", b"a<b<c"),
        (b"a<Script>porn</Script>b", b"a<porn<b"),  # mixed case: shown, like both pipelines
        (b"a<scripts>porn</scripts>b", b"a<porn<b"),  # another tag
        (b"a<script>porn", b"a<"),  # never closed: hidden to the end
        (b"a<!-- porn -->b<!-- porn", b"a<b<"),
        (b'<img src="x" alt="free porn" title="porn">', b"<free porn<"),
        (b"<img alt='a' data-alt=\"b\">", b"<a<b<"),
        (
            b'<meta name="description" content="porn">x',
            b'<meta name="description" content="porn"<x',
        ),
        (
            b'<meta property="og:title" content="porn">',
            b'<meta property="og:title" content="porn"<',
        ),
        (b'<meta name="viewport" content="porn">x', b"<x"),
        (b"1 < 2 porn > 1", b"1 < 1"),  # a stray "<" reads as a tag, on the raw page too
        (b"no markup", b"no markup"),
        (b"", b""),
        (b"<", b"<"),
        (b"<m", b"<"),
    ],
)
def test_the_text_extractor(page: bytes, text: bytes) -> None:
    assert fastscan._visible.visible(page) == text
    assert fastscan._visible.visible(memoryview(page)) == text


@pytest.mark.skipif(fastscan._visible is None, reason="proxy/_visible.c not built")
def test_the_text_extractor_hides_what_the_python_checks_hide() -> None:
    """proxy/_visible.c keeps its own copy of fastscan.HIDDEN_TAGS: the same elements."""
    for tag in fastscan.HIDDEN_TAGS:
        assert fastscan._visible.visible(b"a<" + tag + b">porn</" + tag + b">b") == b"a<b", tag
    for tag in (b"Script", b"Style", b"TEMPLATE", b"Svg", b"p", b"span"):
        assert fastscan._visible.visible(b"a<" + tag + b">porn</" + tag + b">b") == b"a<porn<b"


def test_c_and_python_find_the_same_visible_phrases(shipped, shipped_py) -> None:
    """On every page of the evaluation set, grown pages included, and the hard cases."""
    if fastscan._visible is None:
        pytest.skip("proxy/_visible.c not built")
    bodies = [row["html"].encode("utf-8") for row in eval_set()]
    for text in (SEX_ED, SALUD_ES, CASINO_ES, PORN_ES):
        bodies.append(f"<html><body><p>{text}</p></body></html>".encode())
    for body in bodies:
        assert shipped.fast_matches(body) == shipped_py.fast_matches(body)


def test_entities_for_letters_go_to_the_reference(small) -> None:
    for page in ("<p>pornograf&iacute;a</p>", "<p>p&#111;rn</p>", "<p>p&#x6F;rn</p>"):
        assert fast(small, page) is None
        score = small.score_body(page.encode(), "text/html")
        assert score.totals["adult"] > 0, page  # the reference decoded the letter
    # punctuation entities do not: "don&#8217;t", "&amp;", "&nbsp;"
    assert fast(small, "<p>don&#8217;t &amp; porn&nbsp;now</p>") == {"porn"}


def test_a_phrase_hidden_in_many_places_still_gets_an_answer(small, small_py, monkeypatch) -> None:
    def page(hidden: int) -> str:
        links = "".join(f'<a href="/porn/{i}">x</a>' for i in range(hidden))
        return f"<script>porn</script>{links}<p>porn</p>"

    if fastscan._visible is not None:  # the visible text only: found at once, however hidden
        assert fast(small, page(fastscan.LOOKS + 2)) == {"porn"}
    # In Python, the first hit's visibility is checked, then the next one's, up to LOOKS times.
    small = small_py
    assert fast(small, page(fastscan.LOOKS - 1)) == {"porn"}  # found further on
    assert fast(small, page(fastscan.LOOKS + 2)) is None  # hidden too often: the reference decides
    assert small.score_body(page(fastscan.LOOKS + 2).encode(), "text/html").totals == {"adult": 60}
    # A phrase set too large for a database per phrase: the whole database looks further on.
    monkeypatch.setattr(fastscan, "_visible", None)
    monkeypatch.setattr(fastscan, "ALONE_UP_TO", 0)
    large = load_phrases(small_dir(small), {"adult"})
    assert large._fast._alone is None
    assert fast(large, page(2)) == {"porn"}
    assert fast(large, page(fastscan.LOOKS + 2)) is None


def test_plain_text_has_no_markup(small) -> None:
    found = small.fast_matches(b"porn <script>free porn", markup=False)
    assert {p.text for i in found for p in small._entries[i]} == {"porn", "free porn"}


def test_known_differences_from_the_reference(small) -> None:
    """Accepted for speed (see the module docstring); the single words still count."""
    for page in ("<p>free <b>porn</b></p>", "<p>free&nbsp;porn</p>"):
        assert fast(small, page) == {"porn"}
        assert reference(small, page) == {"porn", "free porn"}


def test_without_hyperscan_every_page_takes_the_reference(small, monkeypatch) -> None:
    monkeypatch.setattr(fastscan, "available", lambda: False)
    ps = load_phrases(small_dir(small), {"adult"})
    assert ps._fast is None
    page = b"<script>porn</script><p>Free porn</p>"
    assert ps.score_body(page, "text/html").totals == small.score_body(page, "text/html").totals
    assert ps.score_body(page, "text/html").totals == {"adult": 110}


def small_dir(ps: content.PhraseSet) -> Path:
    return Path(ps.files[0]).parent
