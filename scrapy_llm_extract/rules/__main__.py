"""List learned rules: ``python -m scrapy_llm_extract.rules [RULES_DIR]``.

One block per site and template: pages the model answered, then each field's
rules with their agreements and disagreements with the model, promoted ones
marked ``*`` (``?`` while suspect). RULES_DIR defaults to
``.scrapy/llm_extract_rules`` (LLM_EXTRACT_RULES_DIR of a project run from here).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .store import FILENAME, RuleStore, TemplateState

LEGEND = """\
Learned rules per site and page template (a hash of the page layout; one page of it is named).
Per field, the rules that reproduced the model's answer:
  * promoted: answers that field of the template's pages (with the other promoted ones)
  ? suspect: the model just contradicted it; the model answers until its next answer decides
    candidate: not yet promoted
  "absent": the model answered null on the template's pages; the field is null there
"""


def describe(site: str, template: str, state: TemplateState) -> list[str]:
    lines = [
        f"{site}  template {template}: {state.model_pages} page(s) answered by the model"
        + (f", e.g. {state.example_url}" if state.example_url else "")
    ]
    for name, rules in sorted(state.rules.items()):
        lines.append(f"  {name}:")
        for key, rule in sorted(rules.items(), key=lambda kv: (-kv[1].promoted, kv[0])):
            mark = "?" if rule.suspect else "*" if rule.promoted else " "
            lines.append(
                f"    {mark} {key}  agreed {rule.agreements}, disagreed {rule.disagreements}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "rules_dir", nargs="?", type=Path, default=Path(".scrapy/llm_extract_rules")
    )
    args = parser.parse_args(argv)
    if not (args.rules_dir / FILENAME).is_file():
        print(f"No learned rules in {args.rules_dir} (no {FILENAME}).", file=sys.stderr)
        return 1
    store = RuleStore(args.rules_dir)
    try:
        print(LEGEND)
        for site, template, state in store.templates():
            print("\n".join(describe(site, template, state)))
        sys.stdout.flush()
    except BrokenPipeError:  # read through "| head" or a pager quit early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
