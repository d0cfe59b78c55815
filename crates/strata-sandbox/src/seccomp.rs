//! The seccomp filter every sandbox runs under: a denylist of the system calls that reach
//! kernel surface a function never needs (mounts, namespaces, module loading, tracing, BPF,
//! keyrings, raw I/O ports, io_uring), `clone` with a namespace flag, `clone3` (ENOSYS, so
//! libc falls back to `clone`, whose flags can be checked), and the x32 system-call range.
//!
//! One BPF program, generated here, that finds the system call by binary search. We used to
//! install `seccompiler`'s filter (a linear chain of about 300 instructions) plus a small
//! hand-written one for what it cannot express. Attaching a filter makes the kernel emulate it
//! for every system-call number to build its allow-cache. For the linear chain that took about
//! 260 µs of every sandbox's start; a search tree is a few comparisons deep. The tests check
//! that this program decides every call exactly as the two filters did, the `seccompiler` one
//! included.

use crate::error::{Result, SandboxError};
use crate::spec::SeccompMode;

/// System calls denied outright.
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("setns", libc::SYS_setns),
    ("unshare", libc::SYS_unshare),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("vhangup", libc::SYS_vhangup),
    ("uselib", libc::SYS_uselib),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// Namespace flags that `clone` may not carry.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Calls of [`DENIED`] a function template may make (see [`SeccompMode::Forker`]): it mounts
/// its instances' /tmp and /proc and makes their namespaces (inside its own user namespace).
/// `unshare` only for a user or cgroup namespace; and since the template's code holds
/// capabilities over the network namespaces it makes, netlink, packet and raw sockets (the
/// ways to configure one: routes, qdiscs, nftables, x_tables) are denied under it.
const FORKER_ALLOWED: &[&str] = &["mount", "unshare"];

/// The compiled filter.
#[derive(Debug, Clone)]
pub struct Filters {
    /// The program, for `PR_SET_SECCOMP`.
    pub program: Vec<libc::sock_filter>,
}

/// `AUDIT_ARCH_X86_64`.
const ARCH_X86_64: u32 = 0xc000_003e;
/// System-call numbers with this bit set are the x32 ABI.
const X32_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARG0_LOW_OFFSET: u32 = 16;
const ARG1_LOW_OFFSET: u32 = 24;

/// Namespaces a function template may `unshare`: its own user namespace (once, after the
/// import) and each instance's cgroup namespace. Every other namespace comes from `clone`.
const FORKER_UNSHARE_DENIED: u32 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID | libc::CLONE_NEWNET | 0x80)
        as u32;

/// What a system call leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Allow,
    Deny,
    /// `clone`: denied when any namespace flag is set.
    Clone,
    /// `clone3`: ENOSYS.
    NoSys,
    Kill,
    /// `unshare` under [`SeccompMode::Forker`]: only a user or cgroup namespace.
    Unshare,
    /// `socket` under [`SeccompMode::Forker`]: no netlink, packet or raw sockets.
    Socket,
}

/// A jump target.
type Label = usize;

/// An instruction whose jumps name labels, resolved to offsets at the end.
enum Item {
    Stmt(u16, u32),
    Jump { code: u16, k: u32, t: Label, f: Label },
    Mark(Label),
}

struct Program {
    items: Vec<Item>,
    labels: usize,
}

impl Program {
    fn label(&mut self) -> Label {
        self.labels += 1;
        self.labels - 1
    }

    fn leaf_label(leaf: Leaf) -> Label {
        leaf as usize
    }

    /// A search over `entries` (sorted by number, distinct); numbers not in it are allowed.
    fn search(&mut self, entries: &[(u32, Leaf)]) {
        let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        let jge = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
        if entries.len() <= 3 {
            for (nr, leaf) in entries {
                let next = self.label();
                self.items.push(Item::Jump {
                    code: jeq,
                    k: *nr,
                    t: Self::leaf_label(*leaf),
                    f: next,
                });
                self.items.push(Item::Mark(next));
            }
            let always = (libc::BPF_JMP | libc::BPF_JA) as u16;
            let allow = Self::leaf_label(Leaf::Allow);
            self.items.push(Item::Jump {
                code: always,
                k: 0,
                t: allow,
                f: allow,
            });
            return;
        }
        let mid = entries.len() / 2;
        let (left, right) = (self.label(), self.label());
        self.items.push(Item::Jump {
            code: jge,
            k: entries[mid].0,
            t: right,
            f: left,
        });
        self.items.push(Item::Mark(left));
        self.search(&entries[..mid]);
        self.items.push(Item::Mark(right));
        self.search(&entries[mid..]);
    }

    /// Resolve labels into offsets.
    fn assemble(self) -> Result<Vec<libc::sock_filter>> {
        let mut at = vec![usize::MAX; self.labels];
        let mut n = 0;
        for item in &self.items {
            match item {
                Item::Mark(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for item in &self.items {
            let here = out.len();
            let offset = |l: Label| -> Result<usize> {
                at[l]
                    .checked_sub(here + 1)
                    .ok_or_else(|| err(format!("label {l} is not ahead of instruction {here}")))
            };
            match item {
                Item::Mark(_) => {}
                Item::Stmt(code, k) => out.push(stmt(*code, *k)),
                Item::Jump { code, k, t, f } if *code == (libc::BPF_JMP | libc::BPF_JA) as u16 => {
                    let _ = (k, f);
                    out.push(stmt(*code, offset(*t)? as u32));
                }
                Item::Jump { code, k, t, f } => {
                    let (t, f) = (offset(*t)?, offset(*f)?);
                    let short = |o: usize| u8::try_from(o).map_err(|_| err(format!("jump of {o} is too long")));
                    out.push(jump(*code, *k, short(t)?, short(f)?));
                }
            }
        }
        Ok(out)
    }
}

fn err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::InvalidSpec(format!("seccomp filter: {e}"))
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Compile the filter for `mode`.
pub fn compile(mode: SeccompMode) -> Result<Filters> {
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let jge = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    let jset = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let deny = match mode {
        SeccompMode::Errno | SeccompMode::Forker => libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        SeccompMode::Kill => libc::SECCOMP_RET_KILL_PROCESS,
    };
    let (denied, ns_flags): (Vec<_>, &[u64]) = match mode {
        SeccompMode::Forker => (
            DENIED
                .iter()
                .filter(|(name, _)| !FORKER_ALLOWED.contains(name))
                .collect(),
            &[libc::CLONE_NEWUSER as u64],
        ),
        _ => (DENIED.iter().collect(), NS_FLAGS),
    };
    let mut entries: Vec<(u32, Leaf)> = denied.iter().map(|(_, nr)| (*nr as u32, Leaf::Deny)).collect();
    if mode == SeccompMode::Forker {
        entries.push((libc::SYS_unshare as u32, Leaf::Unshare));
        entries.push((libc::SYS_socket as u32, Leaf::Socket));
    }
    entries.push((libc::SYS_clone as u32, Leaf::Clone));
    entries.push((libc::SYS_clone3 as u32, Leaf::NoSys));
    entries.sort_unstable_by_key(|e| e.0);
    entries.dedup_by_key(|e| e.0);

    // Labels 0..7 are the leaves, in `Leaf` order.
    let mut p = Program {
        items: Vec::new(),
        labels: 7,
    };
    let (arch_ok, native) = (p.label(), p.label());
    let kill = Program::leaf_label(Leaf::Kill);
    p.items.push(Item::Stmt(ld, ARCH_OFFSET));
    p.items.push(Item::Jump {
        code: jeq,
        k: ARCH_X86_64,
        t: arch_ok,
        f: kill,
    });
    p.items.push(Item::Mark(arch_ok));
    p.items.push(Item::Stmt(ld, NR_OFFSET));
    p.items.push(Item::Jump {
        code: jge,
        k: X32_BIT,
        t: kill,
        f: native,
    });
    p.items.push(Item::Mark(native));
    p.search(&entries);
    let ns_mask = ns_flags.iter().fold(0u64, |m, f| m | f);
    let ns_mask = u32::try_from(ns_mask).map_err(|_| err("namespace flags above bit 31"))?;
    let (allow, deny_l) = (Program::leaf_label(Leaf::Allow), Program::leaf_label(Leaf::Deny));
    let and = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    let forker_only = if mode == SeccompMode::Forker {
        vec![
            (
                Leaf::Unshare,
                vec![
                    Item::Stmt(ld, ARG0_LOW_OFFSET),
                    Item::Jump {
                        code: jset,
                        k: FORKER_UNSHARE_DENIED,
                        t: deny_l,
                        f: allow,
                    },
                ],
            ),
            (Leaf::Socket, {
                let mut body = vec![Item::Stmt(ld, ARG0_LOW_OFFSET)];
                for domain in [libc::AF_NETLINK, libc::AF_PACKET] {
                    let next = p.label();
                    body.push(Item::Jump {
                        code: jeq,
                        k: domain as u32,
                        t: deny_l,
                        f: next,
                    });
                    body.push(Item::Mark(next));
                }
                body.extend([
                    Item::Stmt(ld, ARG1_LOW_OFFSET),
                    Item::Stmt(and, 0xf),
                    Item::Jump {
                        code: jeq,
                        k: libc::SOCK_RAW as u32,
                        t: deny_l,
                        f: allow,
                    },
                ]);
                body
            }),
        ]
    } else {
        Vec::new()
    };
    // BPF jumps only go forward: the blocks that jump to allow and deny come first.
    for (leaf, body) in forker_only.into_iter().chain([
        (
            Leaf::Clone,
            vec![
                Item::Stmt(ld, ARG0_LOW_OFFSET),
                Item::Jump {
                    code: jset,
                    k: ns_mask,
                    t: Program::leaf_label(Leaf::Deny),
                    f: Program::leaf_label(Leaf::Allow),
                },
            ],
        ),
        (Leaf::Allow, vec![Item::Stmt(ret, libc::SECCOMP_RET_ALLOW)]),
        (Leaf::Deny, vec![Item::Stmt(ret, deny)]),
        (
            Leaf::NoSys,
            vec![Item::Stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32)],
        ),
        (Leaf::Kill, vec![Item::Stmt(ret, libc::SECCOMP_RET_KILL_PROCESS)]),
    ]) {
        p.items.push(Item::Mark(Program::leaf_label(leaf)));
        p.items.extend(body);
    }
    Ok(Filters { program: p.assemble()? })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
        TargetArch,
    };

    use super::*;

    /// Run a classic BPF program over a `seccomp_data` (only what seccomp programs use).
    fn run(prog: &[libc::sock_filter], data: &[u8; 64]) -> u32 {
        trace(prog, data).0
    }

    /// The result and the number of instructions executed.
    fn trace(prog: &[libc::sock_filter], data: &[u8; 64]) -> (u32, usize) {
        let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            steps += 1;
            let i = prog[pc];
            let class = (i.code & 0x07) as u32;
            match class {
                c if c == libc::BPF_LD => {
                    let at = i.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                    pc += 1;
                }
                c if c == libc::BPF_ALU => {
                    assert_eq!((i.code & 0xf0) as u32, libc::BPF_AND, "only AND is used");
                    acc &= i.k;
                    pc += 1;
                }
                c if c == libc::BPF_JMP => {
                    let op = (i.code & 0xf0) as u32;
                    let taken = match op {
                        o if o == libc::BPF_JA => {
                            pc += 1 + i.k as usize;
                            continue;
                        }
                        o if o == libc::BPF_JEQ => acc == i.k,
                        o if o == libc::BPF_JGE => acc >= i.k,
                        o if o == libc::BPF_JGT => acc > i.k,
                        o if o == libc::BPF_JSET => acc & i.k != 0,
                        other => panic!("jump op {other:#x}"),
                    };
                    pc += 1 + if taken { i.jt } else { i.jf } as usize;
                }
                c if c == libc::BPF_RET => return (i.k, steps),
                other => panic!("class {other:#x}"),
            }
        }
    }

    fn data(arch: u32, nr: u32, arg0: u64) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[0..4].copy_from_slice(&nr.to_ne_bytes());
        d[4..8].copy_from_slice(&arch.to_ne_bytes());
        d[16..24].copy_from_slice(&arg0.to_ne_bytes());
        d
    }

    /// The filters as they were: seccompiler's denylist, then the hand-written prefix. The
    /// kernel runs both and takes the most severe result.
    fn reference(mode: SeccompMode, d: &[u8; 64]) -> u32 {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
        let clone_rules = NS_FLAGS
            .iter()
            .map(|f| {
                SeccompRule::new(vec![
                    SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*f), *f).unwrap(),
                ])
                .unwrap()
            })
            .collect();
        rules.insert(libc::SYS_clone, clone_rules);
        let action = match mode {
            SeccompMode::Errno | SeccompMode::Forker => SeccompAction::Errno(libc::EPERM as u32),
            SeccompMode::Kill => SeccompAction::KillProcess,
        };
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, TargetArch::x86_64).unwrap();
        let bpf: BpfProgram = filter.try_into().unwrap();
        let denylist: Vec<libc::sock_filter> = bpf
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        let jge = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        let prefix = vec![
            stmt(ld, 0),
            jump(jeq, libc::SYS_clone3 as u32, 0, 1),
            stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
            jump(jge, X32_BIT, 0, 1),
            stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(ret, libc::SECCOMP_RET_ALLOW),
        ];
        most_severe(run(&denylist, d), run(&prefix, d))
    }

    /// The kernel's precedence: the lower action value wins (KILL_PROCESS < ... < ALLOW),
    /// comparing the action bits only.
    fn most_severe(a: u32, b: u32) -> u32 {
        let action = |v: u32| (v & libc::SECCOMP_RET_ACTION_FULL) as i32;
        if action(a) <= action(b) { a } else { b }
    }

    #[test]
    fn decides_every_call_exactly_as_the_seccompiler_filters_did() {
        let flags: Vec<u64> = [
            0u64,
            libc::CLONE_VM as u64 | libc::CLONE_FS as u64 | libc::SIGCHLD as u64,
            1 << 40,
        ]
        .into_iter()
        .chain(NS_FLAGS.iter().copied())
        .chain(NS_FLAGS.iter().map(|f| f | libc::CLONE_VM as u64 | (1 << 35)))
        .collect();
        for mode in [SeccompMode::Errno, SeccompMode::Kill] {
            let prog = compile(mode).unwrap().program;
            for nr in (0..1024).chain([X32_BIT, X32_BIT + 1, X32_BIT + 59, u32::MAX]) {
                let args: &[u64] = if nr == libc::SYS_clone as u32 {
                    &flags
                } else {
                    &[0, u64::MAX]
                };
                for arg in args {
                    let d = data(ARCH_X86_64, nr, *arg);
                    assert_eq!(run(&prog, &d), reference(mode, &d), "{mode:?} nr {nr} arg {arg:#x}");
                }
            }
            // Another architecture (i386) is killed.
            let d = data(0x4000_0003, 1, 0);
            assert_eq!(run(&prog, &d), libc::SECCOMP_RET_KILL_PROCESS);
            assert_eq!(reference(mode, &d), libc::SECCOMP_RET_KILL_PROCESS);
        }
    }

    #[test]
    fn the_program_is_short_and_shallow() {
        let prog = compile(SeccompMode::Errno).unwrap().program;
        assert!(prog.len() < 150, "{} instructions", prog.len());
        // Every denied call, and an allowed one, is decided within a dozen instructions.
        let steps = |nr: u32| trace(&prog, &data(ARCH_X86_64, nr, 0)).1;
        for (name, nr) in DENIED {
            assert!(steps(*nr as u32) <= 14, "{name}: {} steps", steps(*nr as u32));
        }
        assert!(steps(libc::SYS_read as u32) <= 14);
    }

    #[test]
    fn the_required_calls_are_denied() {
        for required in [
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "reboot",
            "swapon",
            "swapoff",
            "setns",
            "unshare",
            "open_by_handle_at",
            "userfaultfd",
            "ioperm",
            "iopl",
        ] {
            assert!(DENIED.iter().any(|(n, _)| *n == required), "{required} is denied");
        }
    }

    #[test]
    fn the_forker_filter_allows_only_what_a_function_template_needs() {
        let prog = compile(SeccompMode::Forker).unwrap().program;
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let call = |nr: libc::c_long, arg0: u64| run(&prog, &data(ARCH_X86_64, nr as u32, arg0));
        assert_eq!(call(libc::SYS_mount, 0), libc::SECCOMP_RET_ALLOW);
        assert_eq!(
            call(libc::SYS_unshare, libc::CLONE_NEWUSER as u64),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(
            call(libc::SYS_unshare, libc::CLONE_NEWCGROUP as u64),
            libc::SECCOMP_RET_ALLOW
        );
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWIPC,
        ] {
            assert_eq!(
                call(libc::SYS_unshare, (flag | libc::CLONE_NEWUSER) as u64),
                eperm,
                "unshare {flag:#x}"
            );
        }
        let socket = |domain: i32, ty: i32| {
            let mut d = data(ARCH_X86_64, libc::SYS_socket as u32, domain as u64);
            d[24..32].copy_from_slice(&(ty as u64).to_ne_bytes());
            run(&prog, &d)
        };
        assert_eq!(
            socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(socket(libc::AF_UNIX, libc::SOCK_SEQPACKET), libc::SECCOMP_RET_ALLOW);
        assert_eq!(socket(libc::AF_INET, libc::SOCK_DGRAM), libc::SECCOMP_RET_ALLOW);
        assert_eq!(socket(libc::AF_NETLINK, libc::SOCK_RAW), eperm);
        assert_eq!(socket(libc::AF_NETLINK, libc::SOCK_DGRAM), eperm);
        assert_eq!(socket(libc::AF_PACKET, libc::SOCK_DGRAM), eperm);
        assert_eq!(socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK), eperm);
        assert_eq!(socket(libc::AF_INET6, libc::SOCK_RAW), eperm);
        let ns = (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC) as u64;
        assert_eq!(call(libc::SYS_clone, ns), libc::SECCOMP_RET_ALLOW);
        assert_eq!(call(libc::SYS_clone, ns | libc::CLONE_NEWUSER as u64), eperm);
        for (name, nr) in DENIED.iter().filter(|(n, _)| !FORKER_ALLOWED.contains(n)) {
            assert_eq!(call(*nr, 0), eperm, "{name} stays denied");
        }
        assert_eq!(call(libc::SYS_clone3, 0), libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        // The strict filter still denies what the forker allows.
        let strict = compile(SeccompMode::Errno).unwrap().program;
        assert_eq!(run(&strict, &data(ARCH_X86_64, libc::SYS_mount as u32, 0)), eperm);
        assert_eq!(run(&strict, &data(ARCH_X86_64, libc::SYS_clone as u32, ns)), eperm);
    }
}
