"""Checks that every metric a dashboard or alerting rule file queries is one the code
exposes (names found in the Rust sources), so renaming a metric cannot silently blank a
panel or an alert. Also checks each dashboard is valid JSON with a query per panel.

    python check_metric_names.py SOURCE_DIR FILE...
"""
import json
import pathlib
import re
import sys

NAME = re.compile(r"\b(control_plane|tenant_router)_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def exposed(source_dir: pathlib.Path) -> set:
    names = set()
    for path in source_dir.rglob("*.rs"):
        if "target" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        names.update(m.group(0) for m in NAME.finditer(text))
        # The router registers its metrics without the prefix (a registry namespace).
        if path.name == "metrics.rs" and "tenant_router" in text:
            names.update("tenant_router_" + n for n in re.findall(r'"([a-z0-9_]+)"', text))
    return names


def main() -> int:
    source_dir, files = pathlib.Path(sys.argv[1]), sys.argv[2:]
    names = exposed(source_dir)
    bad = []
    for f in files:
        text = pathlib.Path(f).read_text(encoding="utf-8")
        if f.endswith(".json"):
            dash = json.loads(text)
            for p in dash["panels"]:
                if not any(t.get("expr") for t in p.get("targets", [])):
                    bad.append(f"{f}: panel {p.get('title')!r} has no query")
        for m in NAME.finditer(text):
            name = m.group(0)
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
            if name not in names and base not in names:
                bad.append(f"{f}: {name} is not exposed by the code")
    for b in sorted(set(bad)):
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
