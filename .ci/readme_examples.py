#!/usr/bin/env python3
"""Write every complete program (a fenced block of the given language holding `int main`)
of a Markdown file to OUTDIR/readme_example_N.<ext>, and print their paths, one a line.
Used by .ci/test.d/20-packaging.sh to build the README's examples as a user would."""
import re
import sys


def main() -> int:
    if len(sys.argv) != 4:
        print("usage: readme_examples.py FILE.md LANG OUTDIR", file=sys.stderr)
        return 2
    path, lang, outdir = sys.argv[1:]
    text = open(path, encoding="utf-8").read()
    blocks = re.findall(r"^```" + re.escape(lang) + r"[ \t]*\n(.*?)^```", text, re.S | re.M)
    ext = {"c": "c", "cpp": "cpp", "c++": "cpp"}.get(lang, lang)
    n = 0
    for body in blocks:
        if not re.search(r"\bint\s+main\s*\(", body):
            continue
        n += 1
        out = f"{outdir}/readme_example_{n}.{ext}"
        with open(out, "w", encoding="utf-8") as f:
            f.write(body)
        print(out)
    if n == 0:
        print(f"{path}: no ```{lang} block with int main", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
