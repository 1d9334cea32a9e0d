//! A container payload: a static ELF, made here, that writes one line and
//! exits 0, for x86_64 or aarch64. No libc, no loader: it runs alone in a
//! `FROM scratch` image.

use kiln::vmm::Arch;

const BASE: u64 = 0x40_0000;
const HEADERS: usize = 64 + 56;

/// The program for `arch` that prints `message`.
pub fn static_hello(arch: Arch, message: &str) -> Vec<u8> {
    let msg = message.as_bytes();
    let (machine, code) = match arch {
        Arch::X86_64 => (0x3e, x86_64_code(msg.len())),
        Arch::Aarch64 => (0xb7, aarch64_code(msg.len())),
    };
    let total = (HEADERS + code.len() + msg.len()) as u64;
    let mut elf = header(machine, total);
    elf.extend(code);
    elf.extend(msg);
    elf
}

/// write(1, msg, len); exit(0), the message right after the code.
fn x86_64_code(len: usize) -> Vec<u8> {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let mut code = Vec::new();
    code.extend([0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    code.extend([0xbf, 1, 0, 0, 0]); // mov edi, 1 (stdout)
    code.extend([0x48, 0x8d, 0x35]); // lea rsi, [rip + 16] (the message,
    code.extend(16u32.to_le_bytes()); //  right after the code)
    code.push(0xba); // mov edx, len
    code.extend(len.to_le_bytes());
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend([0x31, 0xff]); // xor edi, edi
    code.extend([0x0f, 0x05]); // syscall
    assert_eq!(code.len(), 17 + 16, "the lea's offset assumes this length");
    code
}

/// The same for aarch64: eight instructions, the message at +32.
fn aarch64_code(len: usize) -> Vec<u8> {
    assert!(len < 1 << 16, "movz takes a 16-bit immediate");
    let movz = |reg: u32, imm: u32| 0xd280_0000 | (imm << 5) | reg;
    // adr x1, .+28: immlo = 28 & 3 = 0, immhi = 28 >> 2 = 7.
    let adr_x1 = 0x1000_0000 | (7 << 5) | 1;
    let svc0 = 0xd400_0001;
    [
        movz(0, 1),          // mov x0, #1 (stdout)
        adr_x1,              // adr x1, msg (4 + 28 = 32)
        movz(2, len as u32), // mov x2, #len
        movz(8, 64),         // mov x8, #64 (write)
        svc0,                // svc #0
        movz(0, 0),          // mov x0, #0
        movz(8, 93),         // mov x8, #93 (exit)
        svc0,                // svc #0
    ]
    .iter()
    .flat_map(|i: &u32| i.to_le_bytes())
    .collect()
}

/// The ELF header and one PT_LOAD of `total` bytes from file offset 0.
fn header(machine: u16, total: u64) -> Vec<u8> {
    let mut elf = Vec::new();
    elf.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LE, v1, SysV
    elf.extend([0u8; 8]);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(machine.to_le_bytes());
    elf.extend(1u32.to_le_bytes());
    elf.extend((BASE + HEADERS as u64).to_le_bytes()); // entry
    elf.extend(64u64.to_le_bytes()); // phoff
    elf.extend(0u64.to_le_bytes()); // shoff
    elf.extend(0u32.to_le_bytes()); // flags
    elf.extend(64u16.to_le_bytes()); // ehsize
    elf.extend(56u16.to_le_bytes()); // phentsize
    elf.extend(1u16.to_le_bytes()); // phnum
    elf.extend([0u8; 6]); // shentsize, shnum, shstrndx
    elf.extend(1u32.to_le_bytes()); // PT_LOAD
    elf.extend(5u32.to_le_bytes()); // R + X
    elf.extend(0u64.to_le_bytes()); // offset
    elf.extend(BASE.to_le_bytes()); // vaddr
    elf.extend(BASE.to_le_bytes()); // paddr
    elf.extend(total.to_le_bytes()); // filesz
    elf.extend(total.to_le_bytes()); // memsz
    elf.extend(0x1000u64.to_le_bytes()); // align
    assert_eq!(elf.len(), HEADERS);
    elf
}

/// A `printf` format that writes `bytes` exactly (every byte as octal, so
/// no `%` or `\` of the data means anything to printf).
pub fn printf_octal(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Runs the host's payload, and the other arch's where binfmt_misc
    /// (qemu-user-static) runs it, which `.ci/prereqs` sets up.
    #[test]
    fn payloads_print_their_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let foreign = !arch.is_native();
            let binfmt = std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
            if foreign && (arch != Arch::Aarch64 || !binfmt.exists()) {
                eprintln!("{arch} payload not run: no binfmt_misc handler for it");
                continue;
            }
            let path = dir.path().join(format!("hello-{arch}"));
            std::fs::write(&path, static_hello(arch, "kiln payload works\n")).expect("w");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let out = std::process::Command::new(&path).output().expect("run");
            assert!(out.status.success(), "{arch}: {out:?}");
            assert_eq!(out.stdout, b"kiln payload works\n", "{arch}");
            assert!(out.stderr.is_empty(), "{arch}");
        }
    }
}
