#!/usr/bin/env python3
"""policies/container-seccomp.json: the container runtime's default seccomp profile (Debian's
containers-common, /usr/share/containers/seccomp.json, the one Podman uses) plus one rule that
allows, unconditionally, exactly the calls the worker's lockdown makes. Docker's default refuses
some of them (`unshare` without CAP_SYS_ADMIN), and every capability is dropped here, so the rule
has to say so explicitly.

    python3 .ci/container-seccomp.py write   # regenerate the profile from this machine's default
    python3 .ci/container-seccomp.py check   # the committed profile is the default plus the rule
    python3 .ci/container-seccomp.py without CALL OUT   # the profile with CALL refused (EPERM)
    python3 .ci/container-seccomp.py no-unshare OUT     # refuses unshare, as Docker's default does
"""
import json
import pathlib
import sys

DEFAULT = pathlib.Path("/usr/share/containers/seccomp.json")
PROFILE = pathlib.Path(__file__).resolve().parent.parent / "policies" / "container-seccomp.json"

# What the lockdown calls (src/sandbox/src/lockdown.rs), in order. .ci/container shows each is
# needed: with it refused, `airlock doctor` fails inside the container.
LOCKDOWN = {
    "close_range": "close every inherited fd above 4",
    "prlimit64": "set the worker's rlimits",
    "unshare": "new user, network, ipc, uts and mount namespaces",
    "capset": "clear the effective, permitted and inheritable capability sets",
    "prctl": "drop the bounding set, clear ambient capabilities, set no_new_privs",
    "landlock_create_ruleset": "the landlock ruleset (and the ABI probe)",
    "landlock_restrict_self": "enforce the landlock ruleset",
    "seccomp": "install the worker's own seccomp filter",
}
RULE = {
    "names": sorted(LOCKDOWN),
    "action": "SCMP_ACT_ALLOW",
    "comment": "Airlock: the worker's lockdown. " + "; ".join(f"{k}: {v}" for k, v in LOCKDOWN.items()),
}


def profile():
    base = json.loads(DEFAULT.read_text())
    base["syscalls"] = [RULE] + base["syscalls"]
    return base


def refusing(call):
    p = json.loads(PROFILE.read_text())
    for rule in p["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n != call]
    p["syscalls"] = [r for r in p["syscalls"] if r["names"]]
    return p


mode = sys.argv[1]
if mode == "write":
    PROFILE.write_text(json.dumps(profile(), indent=2) + "\n")
elif mode == "check":
    committed = json.loads(PROFILE.read_text())
    if committed != profile():
        sys.exit(f"{PROFILE} is not {DEFAULT} plus the lockdown's rule; run `python3 {sys.argv[0]} write`")
    print(f"{PROFILE.name}: {DEFAULT} plus the lockdown's {len(LOCKDOWN)} calls")
elif mode == "without":
    pathlib.Path(sys.argv[3]).write_text(json.dumps(refusing(sys.argv[2])))
elif mode == "no-unshare":
    p = refusing("unshare")
    p["syscalls"].insert(0, {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
    pathlib.Path(sys.argv[2]).write_text(json.dumps(p))
elif mode == "calls":
    print(" ".join(sorted(LOCKDOWN)))
else:
    sys.exit(__doc__)
