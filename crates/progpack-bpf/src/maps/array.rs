//! Array and per-CPU array maps: `max_entries` values indexed by a `u32` key, all present from
//! creation (zeroed), never deleted. Value `i` of CPU `c` sits at
//! `(c * max_entries + i) * stride` in the arena, `stride` being the value size rounded up to
//! 8 bytes (so values are 8-byte aligned, as the kernel lays them out).

use super::arena::Arena;
use super::{cpu, MapError, UpdateFlag};

/// An array (per-CPU if `cpus > 1`).
#[derive(Debug)]
pub(crate) struct ArrayMap {
    pub(crate) arena: Arena,
    value_size: usize,
    stride: usize,
    max: u32,
    cpus: usize,
}

impl ArrayMap {
    pub(crate) fn new(value_size: u32, max: u32, per_cpu: bool) -> Result<ArrayMap, MapError> {
        let cpus = if per_cpu { cpu::possible_cpus() } else { 1 };
        let stride = (value_size as u64).next_multiple_of(8);
        let bytes = stride
            .checked_mul(max as u64)
            .and_then(|b| b.checked_mul(cpus as u64))
            .ok_or(MapError::TooLarge { bytes: u64::MAX })?;
        Ok(ArrayMap {
            arena: Arena::new(bytes)?,
            value_size: value_size as usize,
            stride: stride as usize,
            max,
            cpus,
        })
    }

    /// The index a key names, if in range.
    fn index(&self, key: &[u8]) -> Option<u32> {
        let k = u32::from_le_bytes(key.get(..4)?.try_into().ok()?);
        (k < self.max).then_some(k)
    }

    fn offset(&self, i: u32, cpu: usize) -> usize {
        (cpu * self.max as usize + i as usize) * self.stride
    }

    /// Address of the calling thread's value for `key`.
    pub(crate) fn lookup_addr(&self, key: &[u8]) -> Option<u64> {
        let i = self.index(key)?;
        Some(self.arena.addr(self.offset(i, self.cpu())))
    }

    fn cpu(&self) -> usize {
        if self.cpus > 1 {
            cpu::current_cpu()
        } else {
            0
        }
    }

    /// The value of `key` for `cpu` (0 for a plain array).
    pub(crate) fn read(&self, key: &[u8], cpu: usize) -> Option<Vec<u8>> {
        let i = self.index(key)?;
        let mut v = vec![0; self.value_size];
        self.arena
            .read(self.offset(i, cpu.min(self.cpus - 1)), &mut v);
        Some(v)
    }

    /// The calling thread's value for `key`.
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read(key, self.cpu())
    }

    /// Values of `key` on every CPU.
    pub(crate) fn lookup_all(&self, key: &[u8]) -> Option<Vec<Vec<u8>>> {
        (0..self.cpus).map(|c| self.read(key, c)).collect()
    }

    pub(crate) fn update(
        &self,
        key: &[u8],
        value: &[u8],
        flag: UpdateFlag,
    ) -> Result<(), MapError> {
        let i = self.index(key).ok_or(MapError::IndexOutOfRange)?;
        if flag == UpdateFlag::NoExist {
            return Err(MapError::Exists);
        }
        let value = value.get(..self.value_size).ok_or(MapError::BadValue)?;
        self.arena.write(self.offset(i, self.cpu()), value);
        Ok(())
    }

    /// Keys: every index.
    pub(crate) fn keys(&self) -> Vec<Vec<u8>> {
        (0..self.max).map(|i| i.to_le_bytes().to_vec()).collect()
    }

    /// Address of value 0 of CPU 0 (global data: `.data`, `.rodata`, `.bss`).
    pub(crate) fn base(&self) -> u64 {
        self.arena.addr(0)
    }
}
