#!/usr/bin/env python3
"""Saves the real output of every probe in profiles/etcd.toml, run against a fresh loopback etcd cluster
(cluster.sh), in the states the parsers must read, into OUT (tests/fixtures/etcd by default):

  healthy            3 members on the old version, all up
  one-member-stopped a follower stopped with the new version installed (between `install` and `start`)
  mixed-versions     that follower back on the new version, the other two on the old one
  after-move-leader  both followers upgraded, captured right after move-leader returned (the old leader not yet)
  all-upgraded       every member on the new version

Each probe's argv is rendered from the profile for each node of the cluster file ({node} {address} {package}
{var.NAME}), while writer.py writes every 20 ms; a the_node probe is saved per node (PROBE.NODE.*), an any_node one once, run with m1's vars
(PROBE.*): .stdout, .stderr and .exit (the exit code). OUT/cluster.toml is the cluster file they ran against (its profile path made relative) and
OUT/states.json what the script knows of each state (who it stopped, who led by `endpoint status -w simple`, which
version each member has installed and runs), for the parsers' tests to compare with.

Usage: capture-fixtures.py [OUT]   (run scripts/real/install-etcd.sh first)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def render(template, node, package, target=None):
    def one(m):
        key = m.group(1)
        if key == "node":
            return node["name"]
        if key == "address":
            return node["address"]
        if key == "package":
            return package
        if key.startswith("var."):
            return node["vars"][key[4:]]
        if key.startswith("target.var."):
            return target["vars"][key[11:]]
        if key == "target":
            return target["name"]
        if key == "target.address":
            return target["address"]
        raise KeyError(key)
    return re.sub(r"\{([a-z_.]+)\}", one, template)


def run(argv, timeout=30):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "tests", "fixtures", "etcd"))
    with open(os.path.join(REPO, "profiles", "etcd.toml"), "rb") as f:
        profile = tomllib.load(f)
    root = tempfile.mkdtemp(prefix="etcd-fixtures-")
    cluster_sh = os.path.join(HERE, "cluster.sh")
    subprocess.run([cluster_sh, "up", root], check=True, stdout=subprocess.DEVNULL)
    try:
        with open(os.path.join(root, "cluster.toml"), "rb") as f:
            cluster = tomllib.load(f)
        nodes = cluster["nodes"]
        by_name = {n["name"]: n for n in nodes}
        package = cluster["upgrade"]["package"]
        env = dict(line.split("=", 1) for line in open(os.path.join(root, "cluster.env")).read().splitlines())
        old, new = env["old_version"], env["new_version"]
        os.makedirs(out, exist_ok=True)
        # The copy names the profile relative to itself (the cluster file's rule), so that it loads from the repo.
        with open(os.path.join(root, "cluster.toml")) as f:
            text = f.read()
        profile_path = os.path.join(REPO, "profiles", "etcd.toml")
        text = text.replace('"%s"' % profile_path, '"%s"' % os.path.relpath(profile_path, out))
        with open(os.path.join(out, "cluster.toml"), "w") as f:
            f.write(text)
        states = {}
        installed = {n["name"]: old for n in nodes}
        running = {n["name"]: old for n in nodes}

        def ctl(name, *args):
            subprocess.run([by_name[name]["vars"]["ctl"], *args], check=True, stdout=subprocess.DEVNULL)

        def leader():
            # An independent reading of who leads: the table output, not the JSON the profile parses.
            etcdctl = os.path.join(package, "bin", "etcdctl")
            for _ in range(100):
                _, stdout, _ = run([etcdctl, "--endpoints", env["endpoints"], "--dial-timeout=1s",
                                    "--command-timeout=3s", "endpoint", "status"])
                for line in stdout.splitlines():
                    fields = [x.strip() for x in line.split(",")]
                    if len(fields) > 4 and fields[4] == "true":
                        return next(n["name"] for n in nodes if n["address"] == fields[0])
                subprocess.run(["sleep", "0.1"])
            raise RuntimeError("no leader")

        def capture(state, note, stopped=()):
            d = os.path.join(out, state)
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            for pname, probe in profile["probes"].items():
                targets = [nodes[0]] if probe["runs_on"] == "any_node" else nodes
                for node in targets:
                    argv = [render(a, node, package) for a in probe["argv"]]
                    code, stdout, stderr = run(argv, timeout=probe["timeout_ms"] / 1000)
                    base = os.path.join(d, pname if probe["runs_on"] == "any_node" else "%s.%s" % (pname, node["name"]))
                    for ext, text in (("stdout", stdout), ("stderr", stderr), ("exit", "%d\n" % code)):
                        with open(base + "." + ext, "w") as f:
                            f.write(text)
            states[state] = {
                "note": note,
                "leader": leader(),
                "stopped": sorted(stopped),
                "installed": dict(installed),
                "running": {k: (None if k in stopped else v) for k, v in running.items()},
            }

        def upgrade(name):
            ctl(name, "stop")
            ctl(name, "install", package)
            installed[name] = new
            ctl(name, "start")
            running[name] = new

        # A writer runs throughout, so that the indexes move as they do during an upgrade.
        writer = subprocess.Popen([sys.executable, os.path.join(HERE, "writer.py"), "--endpoints", env["endpoints"],
                                   "--log", os.path.join(root, "writer.log"), "--interval-ms", "20"],
                                  stdout=subprocess.DEVNULL)
        subprocess.run(["sleep", "1"])
        capture("healthy", "3 members on %s, all up" % old)
        first_leader = leader()
        followers = [n["name"] for n in nodes if n["name"] != first_leader]
        f1, f2 = followers
        ctl(f1, "stop")
        ctl(f1, "install", package)
        installed[f1] = new
        capture("one-member-stopped", "%s stopped with %s installed (between install and start)" % (f1, new),
                stopped=[f1])
        ctl(f1, "start")
        running[f1] = new
        capture("mixed-versions", "%s runs %s, %s and %s run %s" % (f1, new, f2, first_leader, old))
        upgrade(f2)
        move = profile["actions"]["move_leader"]
        argv = [render(a, by_name[first_leader], package, target=by_name[f1]) for a in move["argv"]]
        code, stdout, stderr = run(argv)
        os.makedirs(os.path.join(out, "actions"), exist_ok=True)
        for ext, text in (("stdout", stdout), ("stderr", stderr), ("exit", "%d\n" % code)):
            with open(os.path.join(out, "actions", "move-leader." + ext), "w") as f:
                f.write(text)
        if code != 0:
            raise RuntimeError("move-leader failed: %s" % stderr)
        capture("after-move-leader", "right after move-leader from %s to %s returned; %s still on %s"
                % (first_leader, f1, first_leader, old))
        upgrade(first_leader)
        capture("all-upgraded", "every member on %s" % new)
        writer.terminate()
        writer.wait(timeout=60)
        with open(os.path.join(out, "states.json"), "w") as f:
            json.dump({"old_version": old, "new_version": new, "states": states}, f, indent=2, sort_keys=True)
            f.write("\n")
    finally:
        subprocess.run([cluster_sh, "down", root], check=False)
        shutil.rmtree(root, ignore_errors=True)
    print(out)


if __name__ == "__main__":
    main()
