#!/usr/bin/env python3
"""Where a broker's time goes while `mqttd bench conn` opens connections.

Usage: tests/bench/conn_cost.py [--broker mqttd|mosquitto] [--clients N] [--runs R]
                                [--config-line 'key = value' ...] [--mqttd PATH ...]

Starts a fresh broker per run on a free loopback port, opens N connections with
`mqttd bench conn` (release build), and, at the moment the generator reports them all open,
reads each broker thread's CPU time (schedstat) and context switches (/proc/PID/task/*), and
the share of the machine's CPUs that were busy (/proc/stat). Prints one line per run: the
connection rate, the busy share, broker CPU per connection, per thread CPU (µs) and context
switches per connection, and the generator's CPU per connection. mqttd's unnamed threads
besides the main one are the DbActor's. With several `--mqttd` binaries (two builds to compare), each run starts each of
them in turn; the generator is always the release build. docs/performance.md ("Run after
the connect path changes" and the sections after it) explains the figures.
Standard library only; Linux only.
"""

import argparse
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MQTTD = os.path.join(ROOT, "target", "release", "mqttd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads(pid):
    """Per thread: (name, CPU time in ns, context switches)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{task}/comm") as f:
                name = f.read().strip()
            with open(f"{task}/schedstat") as f:
                on_cpu_ns = int(f.read().split()[0])
            with open(f"{task}/status") as f:
                status = f.read()
        except FileNotFoundError:
            continue
        if tid == str(pid):
            # mqttd's main thread runs the actix System: Listener, Registry, ConnectionLog.
            name += " (main)"
        switches = sum(
            int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line
        )
        found[tid] = (name, on_cpu_ns, switches)
    return found


def cpu_times():
    """(all, idle) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values), values[3]


def start_broker(broker, binary, work, port, config_lines):
    if broker == "mqttd":
        config = os.path.join(work, "mqttd.toml")
        with open(config, "w") as f:
            f.write("allow_anonymous = true\n")
            f.write(f'db_path = "{work}/mqttd.db"\n')
            f.writelines(line + "\n" for line in config_lines)
            f.write(f'[[listener]]\nbind = "127.0.0.1:{port}"\n')
        command = [binary, "--config", config]
    else:
        config = os.path.join(work, "mosquitto.conf")
        with open(config, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        command = ["mosquitto", "-c", config]
    env = dict(os.environ, RUST_LOG="warn")
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"{broker} did not start listening on {port}")


def run(args, binary, work):
    port = free_port()
    broker = start_broker(args.broker, binary, work, port, args.config_line)
    try:
        time.sleep(0.3)
        before, machine_before = threads(broker.pid), cpu_times()
        bench = subprocess.Popen(
            [MQTTD, "bench", "conn", "--clients", str(args.clients), "--port", str(port),
             "--duration", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        after = machine_after = generator = None
        for line in bench.stderr:
            if line.startswith("opened"):
                after, machine_after = threads(broker.pid), cpu_times()
                generator = sum(on_cpu_ns for _, on_cpu_ns, _ in threads(bench.pid).values())
                break
        out = bench.communicate()[0]
    finally:
        broker.terminate()
        broker.wait()
    if after is None:
        sys.exit("the bench did not report its connections open")
    rate = re.search(r'"connect_rate":([0-9.]+)', out).group(1)
    busy = 1 - (machine_after[1] - machine_before[1]) / (machine_after[0] - machine_before[0])
    total, parts = 0.0, []
    for tid, (name, on_cpu_ns, switches) in after.items():
        old = before.get(tid, (name, 0, 0))
        cpu = (on_cpu_ns - old[1]) / 1000 / args.clients
        total += cpu
        if cpu >= 0.05:
            parts.append(f"{name}: {cpu:.1f} µs, {(switches - old[2]) / args.clients:.2f} cs")
    label = binary if args.broker == "mqttd" and len(args.mqttd) > 1 else args.broker
    print(f"{label}: {float(rate):.0f} conn/s, {busy:.0%} of CPUs busy, "
          f"{total:.1f} µs broker CPU per connection ({'; '.join(parts)}); "
          f"generator {generator / 1000 / args.clients:.1f} µs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["mqttd", "mosquitto"], default="mqttd")
    parser.add_argument("--clients", type=int, default=19000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config-line", action="append", default=[],
                        help="a top-level line added to mqttd's configuration")
    parser.add_argument("--mqttd", action="append",
                        help="an mqttd binary to start as the broker (default: the release build)")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.mqttd = args.mqttd or [MQTTD]
    for _ in range(args.runs):
        for binary in args.mqttd:
            with tempfile.TemporaryDirectory() as work:
                run(args, binary, work)


if __name__ == "__main__":
    main()
