//! The two hash structures over the log: the chain and the RFC 6962 Merkle tree.
//!
//! The chain (`hash_n = SHA-256(hash_{n-1} || record_n)`, genesis = 32 zero
//! bytes) makes every record depend on all before it, so a verifier that walks
//! the whole log finds the first record that changed. The Merkle tree (leaf =
//! `SHA-256(0x00 || record)`, node = `SHA-256(0x01 || left || right)`, as in
//! RFC 6962 §2.1) lets one record be proven to belong to a signed checkpoint
//! with a logarithmic audit path, without handing over the log.
//!
//! sha2 0.10 picks the x86 SHA-NI instructions at run time when the CPU has
//! them (no crate feature needed; the `asm` feature only replaces the portable
//! fallback), so these functions run at the hardware's speed.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The chain's predecessor of the first record.
pub const GENESIS: Hash = [0u8; 32];

/// `SHA-256(prev || record)`: a record's chain hash.
pub fn chain_hash(prev: &Hash, record: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(record);
    h.finalize().into()
}

/// `SHA-256(0x00 || record)`: a record's Merkle leaf hash.
pub fn leaf_hash(record: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(record);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: an interior Merkle node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The right edge of a Merkle tree: the roots of its perfect subtrees, largest
/// first (one per set bit of the size). Enough to append leaves and compute
/// the root without keeping the leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A frontier from its parts; `None` if the node count does not match the size.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Self { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Subtree roots, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        // Each trailing 1-bit of the old size is a perfect subtree of the
        // same height as the one being carried: merge them.
        while s & 1 == 1 {
            match self.nodes.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break,
            }
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The RFC 6962 root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// Serialised as u64 size || node*.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.nodes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for n in &self.nodes {
            out.extend_from_slice(n);
        }
        out
    }

    /// Parses [`Frontier::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let size = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let rest = bytes.get(8..)?;
        if !rest.len().is_multiple_of(32) {
            return None;
        }
        let nodes = rest
            .chunks_exact(32)
            .map(|c| c.try_into().ok())
            .collect::<Option<Vec<Hash>>>()?;
        Self::from_parts(size, nodes)
    }
}

/// The root of a tree over these leaf hashes (RFC 6962 MTH), recursively.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let p = n.next_power_of_two();
    if p == n {
        n / 2
    } else {
        p / 2
    }
}

/// The RFC 6962 audit path (PATH(m, D[n])) of leaf `index` in the tree over `leaves`.
pub fn audit_path(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let mut path = Vec::new();
    fn walk(leaves: &[Hash], m: usize, path: &mut Vec<Hash>) {
        if leaves.len() <= 1 {
            return;
        }
        let k = split(leaves.len());
        if m < k {
            walk(&leaves[..k], m, path);
            path.push(root_of(&leaves[k..]));
        } else {
            walk(&leaves[k..], m - k, path);
            path.push(root_of(&leaves[..k]));
        }
    }
    if index < leaves.len() {
        walk(leaves, index, &mut path);
    }
    path
}

/// The root that an audit path implies for a leaf (RFC 9162 §2.1.3.2); `None`
/// if the path has the wrong length for this index and size.
pub fn root_from_path(index: u64, size: u64, leaf: &Hash, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    // The certificate-transparency reference leaves and roots (used by the
    // RFC 6962 implementations in Go and C++).
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_reference_vectors() {
        assert_eq!(
            hex::encode(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut f = Frontier::new();
        let mut leaves = Vec::new();
        for (i, leaf) in LEAVES.iter().enumerate() {
            let h = leaf_hash(leaf);
            f.push(h);
            leaves.push(h);
            assert_eq!(hex::encode(&f.root()), ROOTS[i], "size {}", i + 1);
            assert_eq!(hex::encode(&root_of(&leaves)), ROOTS[i]);
        }
    }

    #[test]
    fn frontier_agrees_with_the_recursive_definition_and_paths_verify() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::new();
        for n in 1..=leaves.len() {
            f.push(leaves[n - 1]);
            let root = root_of(&leaves[..n]);
            assert_eq!(f.root(), root, "size {n}");
            let back = Frontier::from_bytes(&f.to_bytes()).expect("frontier bytes");
            assert_eq!(back, f);
            for m in 0..n {
                let path = audit_path(&leaves[..n], m);
                let got = root_from_path(m as u64, n as u64, &leaves[m], &path);
                assert_eq!(got, Some(root), "size {n} leaf {m}");
                // A wrong index or a short path must not verify.
                if n > 1 {
                    let other = (m + 1) % n;
                    assert_ne!(
                        root_from_path(other as u64, n as u64, &leaves[m], &path),
                        Some(root)
                    );
                    assert_ne!(
                        root_from_path(m as u64, n as u64, &leaves[m], &path[1..]),
                        Some(root)
                    );
                }
            }
        }
    }
}
