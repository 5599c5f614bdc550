#!/usr/bin/python3
"""Write the escape battery's results table into docs/HARDENING.md.

Reads the JSON the last battery run(s) left (integration/escape/results.json,
or the file given with --results) and replaces everything between the
`<!-- escape-results:begin -->` and `<!-- escape-results:end -->` markers of
docs/HARDENING.md (or --doc) with: the run's facts, the table
(attack | runc (Docker-like defaults) | agentshim (default policy)), the list
of what runc with Docker-like defaults allows that agentshim stops, and the
list of what agentshim still lets through.

    /usr/bin/python3 integration/escape/report.py [--results FILE] [--doc FILE] [--check]

--check exits 1 if the document is not up to date with the results (for CI).
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BEGIN = "<!-- escape-results:begin -->"
END = "<!-- escape-results:end -->"
COLUMNS = [("runc", "runc (Docker-like defaults)"), ("agentshim", "agentshim (default policy)")]

# Attacks whose kernel support decides the outcome before any runtime does:
# when the option is off, the attempt fails under every runtime, and the
# capability-bit rows named here test the same ground another way.
KERNEL_DEPENDS = {
    "finit_module": ("CONFIG_MODULES", "cap_sys_module"),
    "init_module": ("CONFIG_MODULES", "cap_sys_module"),
    "delete_module": ("CONFIG_MODULES", "cap_sys_module"),
    "ioperm": ("CONFIG_X86_IOPL_IOPERM", "cap_sys_rawio"),
    "kexec_file_load": ("CONFIG_KEXEC_FILE", "cap_sys_boot"),
    "sysctl_syscall": ("CONFIG_SYSCTL_SYSCALL", "proc_sys_*"),
    "proc_sysrq_trigger": ("CONFIG_MAGIC_SYSRQ", "proc_sys_* (read-only /proc)"),
    "proc_kcore": ("CONFIG_PROC_KCORE", "proc_keys, proc_timer_list (masking)"),
    "dev_mem": ("CONFIG_DEVMEM", "mknod_char, cap_mknod"),
    "sys_uevent_helper": ("CONFIG_UEVENT_HELPER", "sys_firmware, cgroup_mkdir (read-only /sys)"),
    "modify_ldt": ("CONFIG_MODIFY_LDT_SYSCALL", None),
    "unshare_time": ("CONFIG_TIME_NS", None),
    "setns_time": ("CONFIG_TIME_NS", None),
}
for _w in ("unshare_user", "io_uring_setup", "mount"):
    KERNEL_DEPENDS[f"x32_{_w}"] = ("CONFIG_X86_X32_ABI", "i386_* rows")
for _w in ("unshare_user", "unshare_mnt", "mount", "io_uring_setup", "userfaultfd", "add_key", "personality"):
    KERNEL_DEPENDS[f"i386_{_w}"] = ("CONFIG_IA32_EMULATION", None)

# Which SPEC requirement stops each attack, for the "still lets through" list.
_SECCOMP = "the default seccomp profile (SPEC: deny-by-default, at least Docker's)"
_NS_SECCOMP = "the default seccomp profile: no unshare/setns/clone with namespace flags"
_CAPS = "the capability set (SPEC: Docker's minus NET_RAW, MKNOD, SETFCAP, AUDIT_WRITE)"
_NNP = "no_new_privs always"
NEEDS = {
    "rootfs_write": "a read-only root filesystem", "rootfs_overwrite_binary": "a read-only root filesystem",
    "unshare_user": _NS_SECCOMP, "clone_newuser": _NS_SECCOMP, "clone3_newuser": _NS_SECCOMP + " (clone3: ENOSYS)",
    "setns_user": _NS_SECCOMP,
    "cap_mknod": _CAPS, "cap_net_raw": _CAPS, "raw_socket": _CAPS, "packet_socket": _CAPS,
    "mknod_block": _CAPS, "mknod_char": _CAPS,
    "ptrace_sibling": _SECCOMP + ": no ptrace", "process_vm_readv": _SECCOMP + ": no process_vm_*",
    "ptrace_traceme_setuid": _SECCOMP + ": no ptrace",
    "keyctl_add_key": _SECCOMP, "perf_event_open": _SECCOMP, "userfaultfd": _SECCOMP, "io_uring_setup": _SECCOMP,
    "bpf_prog_load": _SECCOMP, "bpf_map_create": _SECCOMP,
    "bpf_host_maps": _SECCOMP + "; the pins are root's 0700 in the host's bpffs, not mounted in the container",
    "personality_read_implies_exec": _SECCOMP + ": personality only with the safe values", "modify_ldt": _SECCOMP,
    "setuid_nnp": _NNP, "file_capability": _NNP + ", and NET_RAW out of the bounding set",
    "host_network_requested": "host namespaces refused; the internal-only network",
    "host_loopback_service": "the internal-only network", "host_address_service": "the internal-only network",
    "pod_network_direct_egress": "the confined network's outbound rules (nftables; no CAP_NET_ADMIN/NET_RAW)",
    "metadata_endpoint": "the internal-only network",
    "fork_bomb_no_config_limit": "policy default pids limit when the config sets none",
    "memory_no_config_limit": "policy default memory limit when the config sets none",
    "tmpfs_exhaustion_unsized": "tmpfs mounts with a size limit",
    "runtime_exe_overwrite": "the runtime's exec process must not expose its host binary in the container "
                             "(non-dumpable before it joins the pid namespace, or exec from a sealed memfd copy as runc does)",
    "audit_dir_and_key": "the audit directory and key never mounted or reachable",
    "kill_supervisor": "the supervisor outside the container's pid namespace",
    "tiocsti_operator_terminal": "a new session for the init (setsid always) and the terminal guard (TIOCSTI: EPERM)",
    "tiocsti_operator_terminal_exec": "a new session for every exec'd process and the terminal guard",
    "tioclinux_operator_terminal": "a new session and the terminal guard (TIOCLINUX: EPERM)",
    "kill_caller_process_group": "a new session and process group for the init",
    "kill_caller_process_group_exec": "a new session and process group for every exec'd process",
    "observer_non_regular_file": "the exec observer opens only regular files (O_PATH, fstat, fstatfs first)",
    "runs_show_escape_codes": "`runs show` escapes control bytes",
    "rec_argv_race": "argv copied in the kernel when the new image is installed (a BPF program on "
                     "sched_process_exec), not read from the caller's memory",
    "rec_argv_exit_race": "argv copied in the kernel before the new program runs: its exiting at once "
                          "loses nothing",
    "rec_symlink_swap": "exec identity from the kernel's own open (fanotify FAN_OPEN_EXEC_PERM)",
    "rec_long_cwd": "exec identity from the kernel's own open: no path re-resolution",
    "rec_shebang_chain": "every file the kernel opens for an exec hashed (fanotify), in order",
    "rec_memfd_exec": "an inode mark on a file named by descriptor before the exec continues",
    "rec_hash_cache_poison": "no writer during an exec (read lease, else ETXTBSY); exec hashes cached only "
                             "from read-only mounts and successful execs",
    "rec_tmpfs_stage": "every writable mount a tree; fanotify FAN_CREATE/FAN_DELETE (FAN_REPORT_DFID_NAME) on "
                       "tmpfs and FAN_CLOSE_WRITE on every writable mount, recorded as file.* events",
    "rec_volume_names": "BPF LSM path hooks (mknod, mkdir, unlink, rmdir, rename, link, symlink) for the "
                        "container's cgroup, recorded as file.* events; without BPF LSM, fanotify filesystem "
                        "marks on the volume's host filesystem filtered by the volume's directories",
    "rec_volume_names_burst": "the same; merged queue events are split per operation, a directory's events "
                              "are kept however soon it is gone (its handle is learned from its creation)",
    "rec_mmap_volume": "FAN_CLOSE_WRITE marks the file dirty; the after walk re-reads it instead of trusting "
                       "(size, mtime, ctime)",
}
NEEDS["runtime_exe_overwrite_upgraded"] = NEEDS["runtime_exe_overwrite"]
for _n in list(KERNEL_DEPENDS):
    if _n.startswith(("i386_", "x32_")):
        NEEDS[_n] = "the default seccomp profile covering the compat syscall ABIs"

# Tests outside the parametrized table, in the order test_escape.py has them.
SPECIAL = ["host_loopback_service", "host_address_service", "host_network_requested", "pod_network_direct_egress",
           "sethostname",
           "audit_dir_and_key", "kill_supervisor", "runtime_exe_overwrite", "symlink_mount_target",
           "fork_bomb_pids_limit", "fork_bomb_no_config_limit", "memory_limit_64m", "memory_no_config_limit",
           "tmpfs_exhaustion_sized", "tmpfs_exhaustion_unsized", "tiocsti_operator_terminal",
           "tiocsti_operator_terminal_exec", "tioclinux_operator_terminal", "kill_caller_process_group",
           "kill_caller_process_group_exec", "observer_non_regular_file", "runs_show_escape_codes",
           "rec_argv_race", "rec_argv_exit_race", "rec_symlink_swap", "rec_long_cwd", "rec_shebang_chain", "rec_memfd_exec",
           "rec_hash_cache_poison", "rec_tmpfs_stage", "rec_volume_names", "rec_volume_names_burst",
           "rec_mmap_volume"]


def attack_order():
    names = []
    try:
        import re
        with open(os.path.join(HERE, "test_escape.py")) as f:
            src = f.read()
        names = re.findall(r'A\(f?"([^"]+)"', src)
    except OSError:
        pass
    return names


def esc_md(s):
    return s.replace("|", "\\|").replace("\n", " ")


def cell(r):
    if r is None:
        return "not run"
    v, d = r["verdict"], esc_md(r["detail"])
    if v == "ESCAPED":
        return f"**ESCAPED**: {d}"
    if v == "BLOCKED":
        return f"blocked: {d}"
    return f"{v}: {d}"


def render(results):
    meta, attacks = results.get("meta", {}), results.get("attacks", {})
    kcfg = meta.get("kernel_config", {})
    template = attack_order()
    rank = {}
    for n in attacks:
        # Expand f-string names of the table (unshare_{t}) by prefix.
        for i, t in enumerate(template):
            if n == t or ("{" in t and n.startswith(t.split("{")[0])):
                rank[n] = i
                break
        else:
            rank[n] = len(template) + (SPECIAL.index(n) if n in SPECIAL else len(SPECIAL))
    names = sorted(attacks, key=lambda n: (rank[n], n))
    out = []
    out.append(f"Results written {meta.get('written', '?')} on kernel {meta.get('kernel', '?')}; "
               f"{meta.get('runc') or 'runc ?'}; {meta.get('agentshim') or 'agentshim ?'}. "
               f"{len(names)} attacks. Regenerate with `/usr/bin/python3 integration/escape/report.py` after "
               f"`pytest integration/escape`.")
    out.append("")
    out.append("| # | attack | " + " | ".join(c[1] for c in COLUMNS) + " |")
    out.append("|---|---|" + "---|" * len(COLUMNS))
    for i, n in enumerate(names, 1):
        a = attacks[n]
        title = esc_md(a.get("title", n))
        dep = KERNEL_DEPENDS.get(n)
        if dep and kcfg.get(dep[0], "y") == "n":
            title += f" *(kernel: {dep[0]} is off, fails under any runtime" + (
                f"; see {dep[1]})*" if dep[1] else ")*")
        out.append(f"| {i} | `{n}`: {title} | " + " | ".join(cell(a.get(c[0])) for c in COLUMNS) + " |")
    out.append("")
    stopped = [n for n in names if a_v(attacks[n], "runc") == "ESCAPED" and a_v(attacks[n], "agentshim") == "BLOCKED"]
    through = [n for n in names if a_v(attacks[n], "agentshim") not in ("BLOCKED", None)]
    both = [n for n in names if a_v(attacks[n], "runc") == "BLOCKED" and a_v(attacks[n], "agentshim") == "BLOCKED"]
    notrun = [n for n in names if a_v(attacks[n], "agentshim") is None]
    out.append(f"**What runc with Docker-like defaults allows that agentshim stops ({len(stopped)}):** "
               + (", ".join(f"`{n}`" for n in stopped) if stopped else "none in this run") + ".")
    out.append("")
    out.append(f"**What agentshim still lets through ({len(through)}):** " + ("" if through else "nothing."))
    if through:
        out.append("")
        for n in through:
            need = NEEDS.get(n)
            out.append(f"- `{n}`: {esc_md(attacks[n]['agentshim']['detail'])}" + (f" (needs: {need})" if need else ""))
    out.append("")
    out.append(f"Blocked under both ({len(both)}): " + (", ".join(f"`{n}`" for n in both) or "none") + ".")
    if notrun:
        out.append("")
        out.append("Not run under agentshim in the recorded results: " + ", ".join(f"`{n}`" for n in notrun) + ".")
    off = sorted(k for k, v in kcfg.items() if v == "n")
    if off:
        out.append("")
        out.append("Kernel options off on the machine of this run (attacks that need them fail under every "
                   "runtime and prove nothing about the runtime): " + ", ".join(f"`{k}`" for k in off) + ".")
    return "\n".join(out) + "\n"


def a_v(a, col):
    r = a.get(col)
    return r["verdict"] if r else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.environ.get("ESCAPE_RESULTS", os.path.join(HERE, "results.json")))
    ap.add_argument("--doc", default=os.path.join(REPO, "docs", "HARDENING.md"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    with open(args.doc) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc or doc.index(BEGIN) > doc.index(END):
        print(f"report: {args.doc} lacks the markers {BEGIN} ... {END}", file=sys.stderr)
        return 2
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + BEGIN + "\n" + render(results) + END + tail
    if args.check:
        if new != doc:
            print(f"report: {args.doc} is not up to date with {args.results}", file=sys.stderr)
            return 1
        return 0
    if new != doc:
        with open(args.doc + ".tmp", "w") as f:
            f.write(new)
        os.replace(args.doc + ".tmp", args.doc)
    print(f"report: wrote {len(results.get('attacks', {}))} attacks into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
