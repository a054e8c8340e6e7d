"""The compact domain index (proxy/index.py) against a plain reference, and its cache.

The reference is the engine's former lookup, written out on plain dicts: every
domain entry a dict key, every parent walked by slicing at dots. For thousands
of entries and non-entries, under random policies, both must return the same
match (rank, specificity, action and the file:line reference).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from proxy import index as idx
from proxy.config import load_config
from proxy.engine import _CAT_MASK, _DOMAIN, _URL, Engine, Match, _path_has_prefix, _PolicyView
from proxy.model import ALLOW, BLOCK
from proxy.rules import load_rules, pack, plan_rules, unpack

CONFIG = """\
groups:
  - name: everyone
    policy: p
policies:
  p:
    block: [alpha, beta]
    allow: [gamma]
"""

WORDS = ["casino", "bet", "poker", "play", "games", "news", "mail", "cdn", "www", "m", "a1", "x-y"]
TLDS = ["com", "net", "org", "co.uk", "fr", "tk"]


def _names(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        labels = [rng.choice(WORDS) + str(rng.randrange(40)) for _ in range(rng.choice((1, 1, 2)))]
        if rng.random() < 0.3:
            labels.insert(0, rng.choice(WORDS))
        out.append(".".join([*labels, rng.choice(TLDS)]))
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three categories whose lists overlap: shared names, parents and children, IPs, URLs."""
    root = tmp_path_factory.mktemp("index")
    rng = random.Random(6)
    rules = root / "rules"
    pool = _names(rng, 1500)
    ips = [f"10.{rng.randrange(4)}.{rng.randrange(4)}.{rng.randrange(9)}" for _ in range(40)]
    for cat in ("alpha", "beta", "gamma"):
        d = rules / "lists" / cat
        d.mkdir(parents=True)
        names = rng.sample(pool, 900) + rng.sample(ips, 10) + ["com", "co.uk"][: rng.randrange(3)]
        names += rng.sample(names, 30)  # duplicates within the list: the first line explains
        (d / "domains").write_text("# list\n" + "\n".join(names) + "\nnot a host\n")
        urls = [
            f"{rng.choice(pool)}/{rng.choice(WORDS)}{rng.choice(['', '/', '/x'])}"
            for _ in range(200)
        ]
        (d / "urls").write_text("\n".join(urls) + "\n")
        (rules / f"{cat}.yaml").write_text(
            f"category: {cat}\ndomains: [{rng.choice(pool)}, {rng.choice(pool)}]\n"
            f"urls: [{rng.choice(pool)}/inline]\n"
            f"include: [lists/{cat}/domains, lists/{cat}/urls]\n"
        )
    (root / "config.yaml").write_text(CONFIG)
    return root


def reference(rules_dir: Path) -> tuple[dict, dict]:
    """Plain dicts, built the way the engine used to build them."""
    from proxy.lists import Garbage, read_list

    plan = plan_rules(rules_dir)
    domains: dict[str, int | tuple[int, ...]] = {}
    urls: dict[str, list[tuple[str, int]]] = {}

    def add(host: str, ref: int) -> None:
        old = domains.get(host)
        if old is None:
            domains[host] = ref
            return
        olds = old if isinstance(old, tuple) else (old,)
        if any(o & _CAT_MASK == ref & _CAT_MASK for o in olds):
            return
        domains[host] = (*olds, ref)

    for step in plan.steps:
        if step[0] == "d":
            add(step[1], step[2])
        elif step[0] == "u":
            urls.setdefault(step[1], []).append((step[2], step[3]))
        else:
            inc = step[1]
            for item in read_list(inc.path, inc.display, inc.kind):
                if isinstance(item, Garbage):
                    continue
                line, entry = item
                ref = pack(inc.cat, inc.fid, line)
                if inc.kind == "domains":
                    add(entry, ref)
                else:
                    urls.setdefault(entry[0], []).append((entry[1], ref))
    for entries in urls.values():
        entries.sort(key=lambda e: -len(e[0]))
    return domains, urls


def reference_best(domains, urls, actions, host, path_l, ip) -> Match | None:
    """The engine's URL and domain steps as they were before the compact index."""
    best = None
    s = host
    while True:
        for prefix, ref in urls.get(s, ()):
            action = actions[ref & _CAT_MASK]
            if action is None or not _path_has_prefix(path_l, prefix):
                continue
            spec = len(s) + len(prefix)
            if (
                best is None
                or spec > best.specificity
                or (spec == best.specificity and action == ALLOW)
            ):
                best = Match(_URL, spec, action, ref)
        dot = s.find(".")
        if ip or dot < 0:
            break
        s = s[dot + 1 :]
    if best is not None:
        return best
    s = host
    while True:
        hit = domains.get(s)
        if hit is not None:
            for ref in hit if isinstance(hit, tuple) else (hit,):
                action = actions[ref & _CAT_MASK]
                if action is not None and (best is None or action == ALLOW):
                    best = Match(_DOMAIN, s.count(".") + 1, action, ref)
            if best is not None:
                return best
        dot = s.find(".")
        if ip or dot < 0:
            break
        s = s[dot + 1 :]
    return None


def queries(domains: dict, urls: dict, rng: random.Random) -> list[tuple[str, str, bool]]:
    names = sorted(domains)
    out = []
    for name in rng.sample(names, min(2000, len(names))):
        ip = name[0].isdigit() and name.replace(".", "").isdigit()
        out.append((name, "/", ip))
        if not ip:
            out.append((f"{rng.choice(WORDS)}.{name}", "/", False))  # a subdomain
            out.append((name.split(".", 1)[-1], "/", False))  # a parent (often not listed)
            out.append((name + "x", "/", False))  # not at a label boundary
            out.append(("x" + name, "/", False))
    for host in rng.sample(sorted(urls), min(500, len(urls))):
        for prefix, _ in urls[host][:2]:
            out.append((host, prefix, False))
            out.append((host, prefix + "/more", False))
            out.append((host, prefix + "s", False))
            out.append(("sub." + host, prefix + "?q=1", False))
    for name in _names(rng, 2000):  # mostly not listed
        out.append((name, "/", False))
    for i in range(200):
        out.append((f"10.{i % 5}.{i % 4}.{i % 9}", "/", True))
    return out


def test_index_agrees_with_plain_reference(tree: Path) -> None:
    engine = Engine(load_config(tree / "config.yaml"), load_rules(tree / "rules"))
    domains, urls = reference(tree / "rules")
    rs = engine.rules
    # the index holds exactly the same names, each with the same references
    assert len(rs.domains) == len(domains)
    assert dict(rs.domains.items()) == {
        k: (v if isinstance(v, tuple) else (v,)) for k, v in domains.items()
    }
    assert rs.urls == urls
    assert any(isinstance(v, tuple) for v in domains.values())  # names several categories list
    rng = random.Random(2026)
    qs = queries(domains, urls, rng)
    assert len(qs) > 5000
    cats = len(rs.cat_names)
    assert cats == 3
    policies = [(BLOCK,) * 3, (ALLOW,) * 3, (BLOCK, ALLOW, None), (None, BLOCK, ALLOW)]
    policies += [(ALLOW, BLOCK, BLOCK), (BLOCK, None, None), (None, None, ALLOW)]
    for trial, actions in enumerate(policies):
        view = _PolicyView(engine.config.policies["p"], actions)
        engine._domain_hits.clear()
        matched = 0
        for host, path, ip in qs:
            want = reference_best(domains, urls, actions, host, path.lower(), ip)
            got = engine._best(view, host, path.lower(), host + path, ip)
            got = got if got is None or got.rank != 1 else None  # patterns: none in this tree
            assert got == want, (trial, host, path, got, want)
            matched += want is not None
        assert matched > 500, (trial, matched)
    for name in _names(rng, 500):
        assert rs.domains.get(name) == domains.get(name)
        assert (name in rs.domains) == (name in domains)


def test_explanations_name_file_and_line(tree: Path) -> None:
    rs = load_rules(tree / "rules")
    text = (tree / "rules" / "lists" / "beta" / "domains").read_text().splitlines()
    for name, refs in list(rs.domains.items())[:300]:
        for ref in refs:
            src = rs.source(ref)
            if src.startswith("rules/lists/beta/domains:"):
                line = int(src.rsplit(":", 1)[1])
                assert text[line - 1].strip() == name


def test_cache_warm_start_and_damage(tree: Path, tmp_path: Path, caplog) -> None:
    cache = tmp_path / "cache"
    cold = load_rules(tree / "rules", cache)
    assert not cold.from_cache and cold.index_path and cold.index_path.exists()
    warm = load_rules(tree / "rules", cache)
    assert warm.from_cache and warm.key == cold.key
    assert dict(warm.domains.items()) == dict(cold.domains.items())
    assert warm.urls == cold.urls and warm.files == cold.files
    assert [vars(c) for c in warm.categories.values()] == [
        vars(c) for c in cold.categories.values()
    ]
    # a damaged cache file is rebuilt, never trusted
    path = warm.index_path
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    again = load_rules(tree / "rules", cache)
    assert not again.from_cache and "digest mismatch" in caplog.text
    path.write_bytes(path.read_bytes()[:1000])
    assert not load_rules(tree / "rules", cache).from_cache
    assert load_rules(tree / "rules", cache).from_cache


def test_a_changed_list_changes_the_key(tree: Path, tmp_path: Path) -> None:
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(tree / "rules", rules)
    cache = tmp_path / "cache"
    first = load_rules(rules, cache)
    with (rules / "lists" / "alpha" / "domains").open("a") as fh:
        fh.write("brand-new.example\n")
    second = load_rules(rules, cache)
    assert second.key != first.key and not second.from_cache
    assert "brand-new.example" in second.domains and "brand-new.example" not in first.domains


def test_isolated_compile_matches_in_process(tree: Path, tmp_path: Path) -> None:
    inline = load_rules(tree / "rules")
    child = load_rules(tree / "rules", tmp_path / "c", isolate=True)
    assert child.index_path is not None and child.index_path.parent == tmp_path / "c"
    assert dict(child.domains.items()) == dict(inline.domains.items())
    nocache = load_rules(tree / "rules", None, isolate=True)
    assert nocache.index_path is None and len(nocache.domains) == len(inline.domains)


def test_include_if_present(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "adult.yaml").write_text(
        "category: adult\ndomains: [a.example]\ninclude_if_present: [lists/ut1/adult/domains]\n"
    )
    rs = load_rules(rules)
    assert "rules/lists/ut1/adult/domains" in rs.files  # watched by the proxy's reloader
    assert len(rs.domains) == 1 and not rs.sources[-1].present
    target = rules / "lists" / "ut1" / "adult" / "domains"
    target.parent.mkdir(parents=True)
    target.write_text("b.example\n")
    rs2 = load_rules(rules)
    assert rs2.source(rs2.domains["b.example"]) == "rules/lists/ut1/adult/domains:1"
    assert rs2.key != rs.key


def test_overlay_reads_elsewhere_but_names_the_final_place(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "lists" / "ut1" / "x").mkdir(parents=True)
    (rules / "lists" / "ut1" / "x" / "domains").write_text("old.example\n")
    (rules / "x.yaml").write_text("category: x\ninclude: [lists/ut1/x/domains]\n")
    new = tmp_path / "new"
    (new / "x").mkdir(parents=True)
    (new / "x" / "domains").write_text("first.example\nnew.example\n")
    rs = load_rules(rules, tmp_path / "cache", overlay={"lists/ut1": new})
    assert "new.example" in rs.domains and "old.example" not in rs.domains
    assert rs.source(rs.domains["new.example"]) == "rules/lists/ut1/x/domains:2"
    # once the new lists are in place, the proxy finds the index the check already built
    (rules / "lists" / "ut1" / "x" / "domains").write_text("first.example\nnew.example\n")
    assert load_rules(rules, tmp_path / "cache").from_cache


def test_wide_references_fall_back_to_64_bits() -> None:
    refs = {
        idx.reversed_key("a.example"): pack(3, 900, 3_000_000_000),
        idx.reversed_key("b.example"): pack(1, 2, 7),
        idx.reversed_key("c.example"): (pack(1, 2, 9), pack(4, 5, 6)),
    }
    index, _ = idx.load(idx.build(refs, {}, {}, "k"), "k")
    assert index._refs.format == "Q"
    assert unpack(index["a.example"]) == (3, 900, 3_000_000_000)
    assert index["c.example"] == (pack(1, 2, 9), pack(4, 5, 6))
    assert index.hits("x.c.example") == ((2, (pack(1, 2, 9), pack(4, 5, 6))),)
    small, _ = idx.load(idx.build({idx.reversed_key("b.example"): pack(1, 2, 7)}, {}, {}, "k"))
    assert small._refs.format == "I" and small["b.example"] == pack(1, 2, 7)


def test_ip_literals_match_only_themselves() -> None:
    refs = {idx.reversed_key("1.2.3.4"): pack(0, 0, 1), idx.reversed_key("com"): pack(0, 0, 2)}
    index, _ = idx.load(idx.build(refs, {}, {}, "k"))
    assert index.hits("1.2.3.4", ip=True) == ((4, (pack(0, 0, 1),)),)
    assert index.hits("9.1.2.3.4", ip=True) == ()
    assert index.hits("a.b.com") == ((1, (pack(0, 0, 2),)),)
    assert index.hits("acom") == ()
