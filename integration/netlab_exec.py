"""Run a command in a test network namespace with its own /etc/hosts.

usage: netlab_exec.py NETNS_PATH HOSTS_FILE CMD [ARGS...]

Like `ip netns exec`, but it leaves /sys (and so /sys/fs/cgroup) alone: it
enters a new mount namespace (slave propagation, so nothing leaks back to
the host), binds HOSTS_FILE over /etc/hosts, joins the network namespace and
execs CMD. Used by test_network.py to run agentshim with the lab as its
"host" network.
"""
import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19

libc = ctypes.CDLL(None, use_errno=True)


def check(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def main():
    netns, hosts, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "make / rslave")
    check(libc.mount(hosts.encode(), b"/etc/hosts", None, MS_BIND, None), "bind /etc/hosts")
    fd = os.open(netns, os.O_RDONLY)
    check(libc.setns(fd, CLONE_NEWNET), "setns " + netns)
    os.close(fd)
    os.execv(cmd[0], cmd)


main()
