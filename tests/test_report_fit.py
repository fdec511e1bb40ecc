"""Every HTML report fits an 800 px window (issue 20): token strips wrap at any width, a long example folds
the rest of its tokens into a "show all" <details> (no JavaScript), a long command folds, and a table wider
than the page scrolls inside itself. Measured in headless Chromium: the page's ``scrollWidth`` after layout,
for run, batch, diff, diff --input, audit, prefs and choices, at 800 and 1400 px. Skipped where no Chromium is installed
(CI installs Debian's ``chromium`` before the tests: ``.ci/run``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ce_inspect.cli import main
from ce_inspect.reports.environment import FOLD_TOKENS
from tests.conftest import build_model

pytestmark = pytest.mark.slow

BROWSER = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
#: One answer of 300 words (about 2,300 byte tokens: more than FOLD_TOKENS) and one of a single unbroken run of
#: 600 characters: neither may push the page wider than the window.
WORDS = " " + " ".join(f"word{i}" for i in range(300))
RUN_ON = " " + "x" * 600
PROBE = (
    "<script>addEventListener('load',()=>{document.body.getBoundingClientRect();"
    "document.body.setAttribute('data-scroll-width',document.documentElement.scrollWidth);"
    "document.body.setAttribute('data-client-width',document.documentElement.clientWidth);});</script>"
)


def page_width(html: Path, width: int) -> tuple[int, int]:
    """(scrollWidth, clientWidth) of ``html`` laid out in a ``width`` px wide headless Chromium window."""
    probe = html.with_name(f"{html.stem}.probe{width}.html")
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},900"]
    dom = subprocess.run(
        [BROWSER, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180, check=True
    ).stdout
    scroll, client = re.search(r'data-scroll-width="(\d+)"', dom), re.search(r'data-client-width="(\d+)"', dom)
    assert scroll and client, "the page never reached its load event"
    return int(scroll[1]), int(client[1])


@pytest.fixture(scope="module")
def long_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny models with a context long enough for the long answers."""
    root = tmp_path_factory.mktemp("fit")
    return (
        build_model(root / "a", "llama", max_position_embeddings=4096),
        build_model(root / "b", "llama", seed=1, max_position_embeddings=4096),
    )


@pytest.fixture(scope="module")
def reports(long_models, tmp_path_factory) -> dict[str, Path]:
    a, b = (str(m) for m in long_models)
    out = tmp_path_factory.mktemp("fit-reports")
    data = out / "data.jsonl"
    rows = [
        {"id": "short", "prompt": "Where is it?", "answer": " Here."},
        {"id": "words", "prompt": "Count:", "answer": WORDS},
        {"id": "run-on", "prompt": "Scream:", "answer": RUN_ON},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pairs = out / "pairs.jsonl"
    pair_rows = [
        {"prompt": "Count:", "chosen": WORDS, "rejected": " one two"},
        {"prompt": "Scream:", "chosen": " no", "rejected": RUN_ON},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pair_rows), encoding="utf-8")
    questions = out / "questions.jsonl"
    question_rows = [
        {"prompt": "Count:" + WORDS, "choices": [" one", RUN_ON], "label": 0},
        {"prompt": "Scream:" + RUN_ON, "choices": [WORDS, " no"], "label": 1},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in question_rows), encoding="utf-8")
    one = ["-p", "Count:", "-a", WORDS, "--device", "cpu"]
    commands = {
        "run": ["run", "-m", a, *one, "--top-k", "5"],
        "run-on": ["run", "-m", a, "-p", "Scream:", "-a", RUN_ON, "--device", "cpu"],
        "batch": ["batch", str(data), "-m", a, "--device", "cpu", "--top-k", "3", "-o", str(out / "b.jsonl")],
        "diff": ["diff", "-m", a, "--model-b", b, *one],
        "diff-input": ["diff", str(data), "-m", a, "--model-b", b, "--device", "cpu", "-o", str(out / "d.jsonl")],
        "audit": ["audit", str(data), "-m", a, "--device", "cpu", "-o", str(out / "a.jsonl")],
        "prefs": ["prefs", str(pairs), "-m", a, "--device", "cpu", "-o", str(out / "p.jsonl")],
        "choices": ["choices", str(questions), "-m", a, "--device", "cpu", "--mutual-info", "-o", str(out / "c.jsonl")],
    }
    pages = {}
    for name, args in commands.items():
        pages[name] = out / f"{name}.html"
        assert main([*args, "--html", str(pages[name])]) == 0, name
    return pages


@pytest.mark.skipif(BROWSER is None, reason="no Chromium (Debian: apt-get install chromium)")
@pytest.mark.parametrize("width", [800, 1400])
@pytest.mark.parametrize("page", ["run", "run-on", "batch", "diff", "diff-input", "audit", "prefs", "choices"])
def test_every_report_fits_the_window(reports, page, width):
    scroll, client = page_width(reports[page], width)
    assert client <= width
    assert scroll <= client, f"{page} is {scroll} px wide in a {client} px window"


def test_a_long_strip_folds_the_rest_into_show_all_and_keeps_every_token(reports):
    """The folded tokens are still in the page (in the <details>), in order; a short strip does not fold."""
    html = reports["run"].read_text(encoding="utf-8")
    strip = html[html.index('<div class="strip"') : html.index("</div>\n</div>", html.index('<div class="strip"'))]
    shown, folded = strip.split('<details class="more">')
    assert len(re.findall(r'<span class="t ', shown)) == FOLD_TOKENS
    total = len(re.findall(r'<span class="t ', strip))
    assert re.search(rf"show all {total} tokens \({total - FOLD_TOKENS} more\)", folded)
    # every token may end a line: a <wbr> after each one
    assert strip.count("<wbr>") == total
    text = "".join(re.findall(r'<span class="t [^"]*" tabindex="0" data-tip="[^"]*"[^>]*>([^<]*)</span>', strip))
    assert text.replace("␣", " ") == "&lt;s&gt;Count:" + WORDS + "&lt;/s&gt;"  # BOS, prompt, answer, EOS
    batch = reports["batch"].read_text(encoding="utf-8")
    assert batch.count('<details class="more">') == 2  # the two long records fold, the short one does not


def test_a_long_command_folds(reports):
    html = reports["run"].read_text(encoding="utf-8")
    assert re.search(r'<details class="cmd"><summary><code>\$ ce-inspect run', html)
    assert "word299" in html[html.index('<details class="cmd">') : html.index("</details>")]
