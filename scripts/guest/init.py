#!/usr/bin/python3
"""The guest side of scripts/guest/run.sh.

As PID 1 (the plain cgroup v2 guest): mount the kernel file systems, cgroup2
on /sys/fs/cgroup with nsdelegate (as systemd mounts it on every normal
node), optionally move into a child cgroup (placement "child"), run the
command, reap every orphan while it runs, write its exit status to the
control share and power off.

Under systemd (the systemd guest: kernel-command-line.service runs it,
systemd having mounted everything): run the command, write its exit status,
power off at once.

The command and its environment come from /run/guest-ctl/cmd.json; its
output goes to the serial console (the host's stdout)."""
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

CTL = "/run/guest-ctl"
libc = ctypes.CDLL(None, use_errno=True)


def mount(src, target, fstype, flags=0, data=None):
    os.makedirs(target, exist_ok=True)
    if libc.mount(src.encode(), target.encode(), fstype.encode(), flags,
                  data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def setup_pid1(spec):
    MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_MOVE = 2, 4, 8, 8192
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "nsdelegate,memory_recursiveprot")
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV)
    # The repository share is mounted at the host's path by the initramfs; a
    # clone under /tmp (as CI may make) must stay visible through the guest's
    # own /tmp: move it aside, mount /tmp, move it back.
    repo = next((a.split("=", 1)[1] for a in open("/proc/cmdline").read().split()
                 if a.startswith("guest.repo=")), "")
    under_tmp = repo.startswith("/tmp/")
    if under_tmp:
        os.makedirs("/run/guest-repo", exist_ok=True)
        mount(repo, "/run/guest-repo", "none", MS_MOVE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    if under_tmp:
        os.makedirs(repo, exist_ok=True)
        mount("/run/guest-repo", repo, "none", MS_MOVE)
    mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("securityfs", "/sys/kernel/security", "securityfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if os.path.exists("/sys/fs/bpf"):
        mount("bpf", "/sys/fs/bpf", "bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for l, t in (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
                 ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr")):
        if not os.path.lexists(t):
            os.symlink(l, t)
    if not os.path.exists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    subprocess.run(["hostname", "agentshim-guest"], check=False)
    if spec.get("placement", "root") == "child":
        # The runner (and we) in a child cgroup, as a service manager puts
        # its services: its processes keep the root's children from having
        # controllers enabled below "/init" itself.
        os.makedirs("/sys/fs/cgroup/init", exist_ok=True)
        with open("/sys/fs/cgroup/init/cgroup.procs", "w") as f:
            f.write("0")


def power_off():
    os.sync()
    if os.getpid() == 1:
        libc.reboot(0x4321FEDC)  # LINUX_REBOOT_CMD_POWER_OFF
    else:
        subprocess.run(["systemctl", "poweroff", "-ff"], check=False)
    time.sleep(60)


def main():
    with open(os.path.join(CTL, "cmd.json")) as f:
        spec = json.load(f)
    pid1 = os.getpid() == 1
    console = os.open("/dev/ttyS0", os.O_WRONLY | os.O_NOCTTY) if not pid1 else None
    rc = 125
    try:
        if pid1:
            setup_pid1(spec)
            console = os.open("/dev/ttyS0", os.O_WRONLY | os.O_NOCTTY)
        with open("/proc/self/cgroup") as f:
            where = f.read().strip()
        os.write(console, f"guest: {'pid1' if pid1 else 'systemd'} runner in {where}\n".encode())
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/root", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "TERM": "dumb"}
        env.update(spec.get("env", {}))
        devnull = os.open("/dev/null", os.O_RDONLY)
        child = subprocess.Popen(spec["argv"], cwd=spec.get("cwd", "/"), env=env, stdin=devnull,
                                 stdout=console, stderr=console, start_new_session=True)
        if pid1:
            # Reap everything (orphans are ours) until the command exits.
            while True:
                pid, status = os.waitpid(-1, 0)
                if pid == child.pid:
                    rc = os.waitstatus_to_exitcode(status)
                    break
            child.returncode = rc
        else:
            rc = child.wait()
    except Exception as e:  # the control share gets an answer in every case
        os.write(console or 2, f"guest: {e}\n".encode())
    with open(os.path.join(CTL, "rc"), "w") as f:
        f.write(f"{rc}\n")
    power_off()


if __name__ == "__main__":
    main()
