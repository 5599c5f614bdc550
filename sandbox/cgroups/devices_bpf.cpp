// cgroup v2 has no devices.allow file: device access is decided by a
// BPF_PROG_TYPE_CGROUP_DEVICE program attached to the cgroup. This file
// turns OCI device rules into such a program (rules evaluated from last to
// first, the first match decides, nothing matching means deny — the same
// outcome as writing the rules in order to v1's devices.allow/deny), a tiny
// interpreter for the instructions it emits (tests, explanations), and the
// bpf(2) calls that load and attach it.
#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <tuple>

#include "common/error.h"
#include "common/fd.h"
#include "sandbox/cgroups/cgroups.h"

namespace agentshim::cgroups {
namespace {

constexpr uint8_t kLdxW = BPF_LDX | BPF_MEM | BPF_W;    // 0x61
constexpr uint8_t kAndK = BPF_ALU | BPF_AND | BPF_K;    // 0x54
constexpr uint8_t kRshK = BPF_ALU | BPF_RSH | BPF_K;    // 0x74
constexpr uint8_t kMovX = BPF_ALU64 | BPF_MOV | BPF_X;  // 0xbf
constexpr uint8_t kMovK = BPF_ALU64 | BPF_MOV | BPF_K;  // 0xb7
constexpr uint8_t kJneK = BPF_JMP | BPF_JNE | BPF_K;    // 0x55
constexpr uint8_t kJeqK = BPF_JMP | BPF_JEQ | BPF_K;    // 0x15
constexpr uint8_t kJsetK = BPF_JMP | BPF_JSET | BPF_K;  // 0x45
constexpr uint8_t kExit = BPF_JMP | BPF_EXIT;           // 0x95

BpfInsn ins(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  return BpfInsn{code, static_cast<uint8_t>((dst & 0xf) | (src << 4)), off, imm};
}

uint32_t access_bits(const std::string& a, const std::string& where) {
  uint32_t bits = 0;
  for (char c : a) {
    if (c == 'r')
      bits |= BPF_DEVCG_ACC_READ;
    else if (c == 'w')
      bits |= BPF_DEVCG_ACC_WRITE;
    else if (c == 'm')
      bits |= BPF_DEVCG_ACC_MKNOD;
    else
      throw Error(where + ".access: \"" + a + "\" is not a subset of rwm");
  }
  return bits ? bits : 7;
}

long bpf(int cmd, union bpf_attr* attr) {
  return ::syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

}  // namespace

std::vector<BpfInsn> device_program(const std::vector<oci::DeviceRule>& rules) {
  std::vector<BpfInsn> p;
  p.push_back(ins(kLdxW, 2, 1, 0, 0));       // r2 = ctx->access_type
  p.push_back(ins(kAndK, 2, 0, 0, 0xffff));  // w2 = device type
  p.push_back(ins(kLdxW, 3, 1, 0, 0));
  p.push_back(ins(kRshK, 3, 0, 0, 16));  // w3 = requested access
  p.push_back(ins(kLdxW, 4, 1, 4, 0));   // r4 = major
  p.push_back(ins(kLdxW, 5, 1, 8, 0));   // r5 = minor
  // After a rule that matches every access (no jumps), the earlier rules and
  // the default deny can never run, and the verifier rejects unreachable
  // instructions: they are still checked but no longer emitted.
  bool unconditional = false;
  for (std::size_t n = rules.size(); n-- > 0;) {
    const oci::DeviceRule& r = rules[n];
    std::string where = "linux.resources.devices[" + std::to_string(n) + "]";
    const bool allow = r.allow;
    uint32_t acc = access_bits(r.access, where);
    std::vector<BpfInsn> block;
    std::vector<std::size_t> jumps;  // indices whose off goes to the block's end
    if (r.type == 'c' || r.type == 'b') {
      jumps.push_back(block.size());
      block.push_back(ins(kJneK, 2, 0, 0, r.type == 'c' ? BPF_DEVCG_DEV_CHAR : BPF_DEVCG_DEV_BLOCK));
    } else if (r.type != 'a') {
      throw Error(where + ".type: \"" + std::string(1, r.type) + "\" is not a, b or c");
    }
    if (acc != 7) {
      if (allow) {
        // An allow rule covers the request only if every requested bit is in it.
        jumps.push_back(block.size());
        block.push_back(ins(kJsetK, 3, 0, 0, static_cast<int32_t>(~acc & 7)));
      } else {
        // A deny rule applies if the request touches any denied bit.
        block.push_back(ins(kMovX, 6, 3, 0, 0));
        block.push_back(ins(kAndK, 6, 0, 0, static_cast<int32_t>(acc)));
        jumps.push_back(block.size());
        block.push_back(ins(kJeqK, 6, 0, 0, 0));
      }
    }
    for (auto [key, reg, v] :
         {std::tuple<const char*, uint8_t, std::int64_t>{"major", 4, r.major}, {"minor", 5, r.minor}}) {
      if (v < 0) continue;
      if (v > 0xffffffffLL) throw Error(where + "." + key + ": out of range");
      jumps.push_back(block.size());
      block.push_back(ins(kJneK, reg, 0, 0, static_cast<int32_t>(static_cast<uint32_t>(v))));
    }
    block.push_back(ins(kMovK, 0, 0, 0, allow ? 1 : 0));
    block.push_back(ins(kExit, 0, 0, 0, 0));
    for (auto j : jumps) block[j].off = static_cast<int16_t>(block.size() - (j + 1));
    if (unconditional) continue;
    p.insert(p.end(), block.begin(), block.end());
    unconditional = jumps.empty();
  }
  if (!unconditional) {
    p.push_back(ins(kMovK, 0, 0, 0, 0));
    p.push_back(ins(kExit, 0, 0, 0, 0));
  }
  return p;
}

bool run_device_program(const std::vector<BpfInsn>& prog, char type, uint32_t major, uint32_t minor,
                        uint32_t access) {
  uint32_t ctx[3] = {(access << 16) | (type == 'b' ? BPF_DEVCG_DEV_BLOCK : BPF_DEVCG_DEV_CHAR), major, minor};
  uint64_t reg[11] = {};
  std::size_t pc = 0;
  for (std::size_t steps = 0; steps < 100000 && pc < prog.size(); ++steps) {
    const BpfInsn& i = prog[pc];
    uint8_t dst = i.regs & 0xf, src = i.regs >> 4;
    switch (i.code) {
      case kLdxW:
        reg[dst] = ctx[i.off / 4];
        break;
      case kAndK:
        reg[dst] = static_cast<uint32_t>(reg[dst]) & static_cast<uint32_t>(i.imm);
        break;
      case kRshK:
        reg[dst] = static_cast<uint32_t>(reg[dst]) >> i.imm;
        break;
      case kMovX:
        reg[dst] = reg[src];
        break;
      case kMovK:
        reg[dst] = static_cast<uint64_t>(static_cast<int64_t>(i.imm));
        break;
      case kJneK:
        if (reg[dst] != static_cast<uint64_t>(static_cast<uint32_t>(i.imm))) pc += i.off;
        break;
      case kJeqK:
        if (reg[dst] == static_cast<uint64_t>(static_cast<uint32_t>(i.imm))) pc += i.off;
        break;
      case kJsetK:
        if (reg[dst] & static_cast<uint64_t>(static_cast<uint32_t>(i.imm))) pc += i.off;
        break;
      case kExit:
        return reg[0] != 0;
      default:
        throw Error("device program: unknown instruction " + std::to_string(i.code));
    }
    ++pc;
  }
  throw Error("device program: ran off the end");
}

void attach_device_program(const std::string& cgroup_dir, const std::vector<BpfInsn>& prog) {
  UniqueFd dir(::open(cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) throw_errno("cgroup: open " + cgroup_dir);
  static_assert(sizeof(BpfInsn) == sizeof(struct bpf_insn));
  static const char license[] = "Apache";
  std::vector<char> logbuf(1 << 16);
  union bpf_attr attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
  attr.insns = reinterpret_cast<uint64_t>(prog.data());
  attr.insn_cnt = static_cast<uint32_t>(prog.size());
  attr.license = reinterpret_cast<uint64_t>(license);
  attr.log_buf = reinterpret_cast<uint64_t>(logbuf.data());
  attr.log_size = static_cast<uint32_t>(logbuf.size());
  attr.log_level = 1;
  UniqueFd pfd(static_cast<int>(bpf(BPF_PROG_LOAD, &attr)));
  if (!pfd) {
    int e = errno;
    throw SysError("bpf(BPF_PROG_LOAD) of the device program for " + cgroup_dir +
                       " (verifier: " + std::string(logbuf.data(), strnlen(logbuf.data(), 400)) + ")",
                   e);
  }
  // Programs attached before (an earlier `update`, or by someone else).
  uint32_t ids[64] = {};
  std::memset(&attr, 0, sizeof(attr));
  attr.query.target_fd = static_cast<uint32_t>(dir.get());
  attr.query.attach_type = BPF_CGROUP_DEVICE;
  attr.query.prog_ids = reinterpret_cast<uint64_t>(ids);
  attr.query.prog_cnt = 64;
  uint32_t old_count = 0;
  if (bpf(BPF_PROG_QUERY, &attr) == 0) old_count = attr.query.prog_cnt;

  std::memset(&attr, 0, sizeof(attr));
  attr.target_fd = static_cast<uint32_t>(dir.get());
  attr.attach_bpf_fd = static_cast<uint32_t>(pfd.get());
  attr.attach_type = BPF_CGROUP_DEVICE;
  attr.attach_flags = BPF_F_ALLOW_MULTI;
  if (bpf(BPF_PROG_ATTACH, &attr) < 0)
    throw_errno("bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE) on " + cgroup_dir);

  for (uint32_t i = 0; i < old_count && i < 64; ++i) {
    std::memset(&attr, 0, sizeof(attr));
    attr.prog_id = ids[i];
    UniqueFd old(static_cast<int>(bpf(BPF_PROG_GET_FD_BY_ID, &attr)));
    if (!old) continue;
    std::memset(&attr, 0, sizeof(attr));
    attr.target_fd = static_cast<uint32_t>(dir.get());
    attr.attach_bpf_fd = static_cast<uint32_t>(old.get());
    attr.attach_type = BPF_CGROUP_DEVICE;
    if (bpf(BPF_PROG_DETACH, &attr) < 0)
      throw_errno("bpf(BPF_PROG_DETACH) of an old device program on " + cgroup_dir);
  }
}

}  // namespace agentshim::cgroups
