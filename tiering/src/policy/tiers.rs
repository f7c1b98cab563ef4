//! Tier numbering and the mapping from an advisor's access probability to a tier.

/// Tier index: 0 hot set, 1 RAM, 2 NVMe, 3 SSD, 4 HDD, 5 networked (DESIGN.md).
pub type TierId = u8;

/// The hottest set, kept mapped and prefaulted.
pub const TIER_HOT: TierId = 0;
/// Resident guest pages within the RAM budget.
pub const TIER_RAM: TierId = 1;
/// First storage tier (NVMe): where a page goes when it leaves RAM with a high score.
pub const TIER_NVME: TierId = 2;
/// SATA SSD.
pub const TIER_SSD: TierId = 3;
/// Hard disk.
pub const TIER_HDD: TierId = 4;
/// Networked block store (NBD): the coldest tier.
pub const TIER_NET: TierId = 5;
/// Number of tiers.
pub const TIER_COUNT: usize = 6;

/// The storage tiers (2-5) from fastest to slowest: the ladder that probability bands
/// and spills walk. By default the tiers' numbering (NVMe, SSD, HDD, networked); a
/// tier file can say otherwise when, say, its network store answers faster than its
/// disk (`order` in docs/tiering.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageOrder([TierId; 4]);

impl Default for StorageOrder {
    fn default() -> Self {
        Self([TIER_NVME, TIER_SSD, TIER_HDD, TIER_NET])
    }
}

impl StorageOrder {
    /// The order `tiers` (fastest first), if it names each of tiers 2-5 once.
    pub fn new(tiers: [TierId; 4]) -> Option<Self> {
        let mut seen = [false; TIER_COUNT];
        for &t in &tiers {
            if !(TIER_NVME..=TIER_NET).contains(&t)
                || std::mem::replace(&mut seen[t as usize], true)
            {
                return None;
            }
        }
        Some(Self(tiers))
    }

    /// The order a tier file's `order` key names: the tiers of `fastest`, then those
    /// it leaves out in their numbering. `None` unless each of `fastest` is a storage
    /// tier (2-5) named once.
    pub fn starting_with(fastest: &[TierId]) -> Option<Self> {
        let rest = (TIER_NVME..=TIER_NET).filter(|t| !fastest.contains(t));
        let all: Vec<TierId> = fastest.iter().copied().chain(rest).collect();
        Self::new(all.try_into().ok()?)
    }

    /// The tiers, fastest first.
    pub fn tiers(&self) -> [TierId; 4] {
        self.0
    }

    /// The tier on rung `rank` (0 fastest, 3 slowest; larger ranks give the slowest).
    pub fn tier(&self, rank: usize) -> TierId {
        self.0[rank.min(3)]
    }

    /// The rung of storage tier `t` (0 fastest); tiers outside 2-5 rank first.
    pub fn rank(&self, t: TierId) -> usize {
        self.0.iter().position(|&x| x == t).unwrap_or(0)
    }

    /// The tier for an evicted page of probability `p`: the band
    /// [`TierThresholds::storage_tier_for`] names, counted down this ladder.
    pub fn storage_tier_for(&self, thresholds: &TierThresholds, p: f32) -> TierId {
        self.tier((thresholds.storage_tier_for(p) - TIER_NVME) as usize)
    }
}

/// Probability thresholds that map [`crate::advisor::Advisor::probability`] to a tier.
///
/// A page goes to the fastest tier whose threshold its probability reaches:
/// `p >= ram` -> RAM (1), `p >= nvme` -> NVMe (2), `p >= ssd` -> SSD (3),
/// `p >= hdd` -> HDD (4), otherwise networked (5). An evicted page never targets
/// RAM: it goes to NVMe or below. These are bands in the default [`StorageOrder`];
/// another order gives band k to its k-th fastest storage tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierThresholds {
    pub ram: f32,
    pub nvme: f32,
    pub ssd: f32,
    pub hdd: f32,
}

impl Default for TierThresholds {
    /// 0.5 / 0.2 / 0.05 / 0.01: a page more likely than not to be touched within the
    /// horizon stays in RAM; one in a hundred or less goes to the network store.
    fn default() -> Self {
        Self {
            ram: 0.5,
            nvme: 0.2,
            ssd: 0.05,
            hdd: 0.01,
        }
    }
}

impl TierThresholds {
    /// Target tier for a page accessed within the horizon with probability `p`.
    pub fn tier_for(&self, p: f32) -> TierId {
        if p >= self.ram {
            TIER_RAM
        } else if p >= self.nvme {
            TIER_NVME
        } else if p >= self.ssd {
            TIER_SSD
        } else if p >= self.hdd {
            TIER_HDD
        } else {
            // NaN lands here too: an advisor without an opinion does not keep pages warm.
            TIER_NET
        }
    }

    /// Target storage tier (2..=5) for a page that leaves RAM.
    pub fn storage_tier_for(&self, p: f32) -> TierId {
        self.tier_for(p).max(TIER_NVME)
    }

    /// Whether the thresholds are in [0, 1] and do not increase from RAM to HDD.
    pub fn is_valid(&self) -> bool {
        let t = [self.ram, self.nvme, self.ssd, self.hdd];
        t.iter().all(|x| (0.0..=1.0).contains(x)) && t.windows(2).all(|w| w[0] >= w[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_thresholds_map_to_tiers() {
        let t = TierThresholds::default();
        assert_eq!(t.tier_for(0.9), TIER_RAM);
        assert_eq!(t.tier_for(0.5), TIER_RAM);
        assert_eq!(t.tier_for(0.3), TIER_NVME);
        assert_eq!(t.tier_for(0.1), TIER_SSD);
        assert_eq!(t.tier_for(0.02), TIER_HDD);
        assert_eq!(t.tier_for(0.001), TIER_NET);
        assert_eq!(t.tier_for(f32::NAN), TIER_NET);
        assert_eq!(t.storage_tier_for(0.9), TIER_NVME);
        assert!(t.is_valid());
        assert!(!TierThresholds {
            ram: 0.1,
            nvme: 0.2,
            ssd: 0.0,
            hdd: 0.0
        }
        .is_valid());
    }

    #[test]
    fn a_storage_order_renames_the_bands() {
        let t = TierThresholds::default();
        let o = StorageOrder::default();
        assert_eq!(o.storage_tier_for(&t, 0.02), TIER_HDD);
        let o = StorageOrder::new([2, 3, 5, 4]).unwrap();
        assert_eq!(o.storage_tier_for(&t, 0.3), TIER_NVME);
        assert_eq!(o.storage_tier_for(&t, 0.02), TIER_NET);
        assert_eq!(o.storage_tier_for(&t, 0.001), TIER_HDD);
        assert_eq!((o.rank(TIER_NET), o.rank(TIER_HDD)), (2, 3));
        assert!(StorageOrder::new([2, 3, 3, 4]).is_none());
        assert!(StorageOrder::new([1, 2, 3, 4]).is_none());
        assert_eq!(StorageOrder::starting_with(&[2, 3, 5]), Some(o));
        assert_eq!(
            StorageOrder::starting_with(&[]),
            Some(StorageOrder::default())
        );
        assert!(StorageOrder::starting_with(&[5, 5]).is_none());
        assert!(StorageOrder::starting_with(&[6]).is_none());
    }
}
