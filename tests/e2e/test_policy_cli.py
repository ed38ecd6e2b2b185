"""Policy as code from the command line: `custos policy validate`, `test` and
`import-acls`, run as a CI pipeline would (exit codes and the
"N passed, N failed" line). Needs no Kafka."""
import subprocess
from pathlib import Path

from harness import CUSTOS_BIN

REPO = Path(__file__).resolve().parents[2]
EX = REPO / "policy" / "examples"


def custos(*args, stdin=None):
    return subprocess.run([CUSTOS_BIN, "policy", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_validate_accepts_the_examples_and_names_a_bad_policy(tmp_path):
    ok = custos("validate", EX / "example.cedar", "--catalog", EX / "example.catalog.yaml")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: ")
    bad = tmp_path / "bad.cedar"
    bad.write_text('@id("typo") permit(principal, action == Action::"Reed", resource);\n')
    r = custos("validate", bad)
    assert r.returncode != 0
    assert "typo" in r.stderr or "Reed" in r.stderr, r.stderr


def test_policy_tests_pass_and_a_wrong_expectation_fails(tmp_path):
    args = ["--policies", EX / "example.cedar", "--catalog", EX / "example.catalog.yaml"]
    r = custos("test", EX / "example.tests.yaml", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed"), last
    n = int(last.split()[0])
    text = (EX / "example.tests.yaml").read_text()
    flipped = text.replace("expect: allow", "expect: deny", 1)
    assert flipped != text
    cases = tmp_path / "flipped.yaml"
    cases.write_text(flipped)
    r = custos("test", cases, *args)
    assert r.returncode == 1
    assert r.stdout.strip().splitlines()[-1] == f"{n - 1} passed, 1 failed"
    assert "FAIL" in r.stdout


def test_import_acls_output_validates(tmp_path):
    listing = REPO / "policy" / "tests" / "fixtures" / "kafka-acls-list.txt"
    r = custos("import-acls", listing, "--super-user", "User:admin")
    assert r.returncode == 0, r.stderr
    assert "forbid" in r.stdout and "permit" in r.stdout
    out = tmp_path / "imported.cedar"
    out.write_text(r.stdout)
    v = custos("validate", out)
    assert v.returncode == 0, v.stderr
    # from standard input too
    r2 = custos("import-acls", "-", "--super-user", "User:admin", stdin=listing.read_text())
    assert r2.stdout == r.stdout
