#!/usr/bin/env python3
"""Python's own answers for PathRegex (lora/path_regex.hpp): for each pattern
and module path, whether re.compile refuses the pattern, re.fullmatch and
re.match. Writes fixtures/regex/python_re.json. Run: python3 make_regex_fixtures.py
(any Python 3.11; the answers do not depend on PyTorch or PEFT)."""
import json, os, re, sys

PATHS = ["q_proj", "blocks.0.attn.q_proj", "blocks.1.attn.v_proj", "blocks.10.ffn.fc1", "lm_head",
         "blocks.0.attn", "tok_emb", "a", "aaaa", "aaaab", "", "a\n", "x.y-z", "blocks.0.attn.q_proj\n",
         "[]", "a{2}", "a{}", "A_b9", "tab\there", "ab", "abab", "{", "_", "0", "q.k.v"]

PATTERNS = [
    # what PEFT users write
    r"q_proj|v_proj", r".*\.attn\..*", r"blocks\.[01]\..*", r".*(q_proj|v_proj)", r"blocks\.\d+\.attn\.(q|k|v)_proj",
    r".*\.(fc1|fc2)$", r"^blocks\.0\..*$", r"(?:.*\.)?lm_head", r"(?P<layer>blocks\.\d+)\.ffn\.fc\d", r"\w+", r"[\w.]+",
    r"[^.]+", r"\S+", r"\s", r".*", r".+", r"", r"a?", r"a*", r"a+b", r"(a|b)*", r"(ab)+", r"a{2}", r"a{2,}",
    r"a{,3}", r"a{1,3}", r"a{0}", r"a{}", r"a{2}?", r"a*?", r"x{a}", r"[]a]", r"[^]a]", r"[a-]", r"[-a]",
    r"[a\-z]", r"[\d_]+", r"\x61+", r"\141", r"\0", r"\.", r"\-", r"a$", r"a$\n", r"a\Z", r"\Aa", r"^", r"$",
    r"(^)*a", r"(a*)*", r"(a*)*b", r"(a|a)*b", r"((a+)+)+b", r"(|a)+", r"a|", r"|", r"()", r"[.]", r"\{",
    r"{", r"a{", r"a{,}", r"[\b]", r"[\n\t]", r"\t", r"tab\there", r"\\", r"a.b", r".\n", r"[a-c]+\.[^a]",
    r"q.k.v", r"q\.k\.v", r"(?:q|k)\.(k|v)\.(v)", r"blocks\.(0|1|10)\..*", r"\W", r"\D+",
    # refused by Python
    r"{2}", r"a**", r"a{2}{3}", r"^*", r"a|*", r"a{3,2}", r"[z-a]", r"[\d-z]", r"\q", r"((a)", r"a)", r"(",
    r"[a", r"\x6", "\\",
    # accepted by Python, refused by PathRegex (listed so the test sees the refusal)
    r"(a)\1", r"(?=a)a", r"(?i)a", r"a++", r"\ba", r"(?#c)a", r"\u0061",
]
REFUSED_BY_PATHREGEX = {r"(a)\1", r"(?=a)a", r"(?i)a", r"a++", r"\ba", r"(?#c)a", r"\u0061"}

cases = []
for p in PATTERNS:
    try:
        r = re.compile(p)
    except re.error:
        cases.append({"pattern": p, "error": True})
        continue
    if p in REFUSED_BY_PATHREGEX:
        cases.append({"pattern": p, "error": True, "python_accepts": True})
        continue
    for t in PATHS:
        cases.append({"pattern": p, "text": t, "error": False,
                      "full": r.fullmatch(t) is not None, "match": r.match(t) is not None})
# PEFT's rank_pattern rule, composed the way get_pattern_key does.
for key in ["q_proj", "attn.q_proj", r"blocks\.1\.attn\.v_proj", "a)|(b", "fc1|fc2"]:
    p = rf"(.*\.)?({key})$"
    r = re.compile(p)
    for t in PATHS:
        cases.append({"pattern": p, "text": t, "error": False,
                      "full": r.fullmatch(t) is not None, "match": r.match(t) is not None})

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "regex", "python_re.json")
with open(out, "w") as f:  # one case per line: reviewable diffs
    f.write('{"python": %s, "cases": [\n' % json.dumps(sys.version.split()[0]))
    f.write(",\n".join(json.dumps(c) for c in cases))
    f.write("\n]}\n")
print(f"{len(cases)} cases -> {out}")
