#!/usr/bin/env python3
"""Plays the operator at a terminal: runs a command on a new pseudo-terminal (its controlling
terminal, so /dev/tty is this pty) and answers prompts as they appear. Used by tests/it/station.rs
to check the station's PIN entry (twice, no echo) and its confirmations.

usage: pty_operator.py SCRIPT_JSON CMD ARGS...
  SCRIPT_JSON: [["prompt text to wait for", "answer line"], ...], answered in order.
Prints everything the command wrote to the terminal, then exits with the command's exit code.
"""
import json
import os
import pty
import select
import sys
import time


def main():
    script = json.loads(sys.argv[1])
    cmd = sys.argv[2:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    out = b""
    seen = 0
    step = 0
    deadline = time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if fd in ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        while step < len(script):
            at = out.find(script[step][0].encode(), seen)
            if at < 0:
                break
            seen = at + len(script[step][0])
            os.write(fd, (script[step][1] + "\n").encode())
            step += 1
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(out.decode(errors="replace"))
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
