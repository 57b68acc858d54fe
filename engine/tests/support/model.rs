//! The reference the store is checked against: a `HashMap` plus a recency `VecDeque`, with its
//! own byte accounting from the store's documented charge formula. Slow and obviously right.

use std::collections::{HashMap, VecDeque};

use kvmesh_engine::{Applied, Config, Error, RemovalKind, Removed, Store, Version};

#[derive(Clone, Debug)]
pub struct Rec {
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub deadline: u64,
    pub version: Version,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
}

pub struct Model {
    pub cfg: Config,
    pub recs: HashMap<Vec<u8>, Rec>,
    /// Front is the most recently used.
    pub order: VecDeque<Vec<u8>>,
    pub bytes: u64,
    pub removals: Vec<(RemovalKind, Vec<u8>, Version)>,
    pub counters: Counters,
}

fn charge(key: &[u8], rec: &Rec) -> u64 {
    match &rec.value {
        Some(v) => Store::charge(key.len(), v.len(), rec.deadline != 0),
        None => Store::tombstone_charge(key.len()),
    }
}

fn dead(rec: &Rec, now: u64) -> bool {
    rec.deadline != 0 && rec.deadline <= now
}

impl Model {
    pub fn new(cfg: Config) -> Model {
        Model {
            cfg,
            recs: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            removals: Vec::new(),
            counters: Counters::default(),
        }
    }

    fn detach(&mut self, key: &[u8]) -> Rec {
        let rec = self
            .recs
            .remove(key)
            .expect("model: detach of a present key");
        self.order.retain(|k| k != key);
        self.bytes -= charge(key, &rec);
        rec
    }

    fn attach(&mut self, key: &[u8], rec: Rec) {
        self.bytes += charge(key, &rec);
        self.order.push_front(key.to_vec());
        self.recs.insert(key.to_vec(), rec);
    }

    fn discard(&mut self, key: &[u8], now: u64) {
        let rec = self.detach(key);
        if rec.value.is_some() {
            let kind = if dead(&rec, now) {
                self.counters.expirations += 1;
                RemovalKind::Expired
            } else {
                self.counters.evictions += 1;
                RemovalKind::Evicted
            };
            self.removals.push((kind, key.to_vec(), rec.version));
        }
    }

    /// Every access first reclaims a record whose deadline or grace has passed.
    fn settle(&mut self, key: &[u8], now: u64) {
        if self.recs.get(key).is_some_and(|r| dead(r, now)) {
            self.discard(key, now);
        }
    }

    fn make_room(&mut self, charge: u64, now: u64) {
        while self.bytes + charge > self.cfg.max_memory {
            let Some(victim) = self.order.back().cloned() else {
                break;
            };
            self.discard(&victim, now);
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if key.len() > self.cfg.max_key_len {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: self.cfg.max_key_len,
            });
        }
        Ok(())
    }

    pub fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        deadline: u64,
        version: Version,
        now: u64,
    ) -> Result<Applied, Error> {
        self.check_key(key)?;
        if value.len() > self.cfg.max_value_len {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: self.cfg.max_value_len,
            });
        }
        let largest = Store::charge(key.len(), value.len(), true);
        if largest > self.cfg.max_memory {
            return Err(Error::EntryTooLarge {
                charge: largest,
                max_memory: self.cfg.max_memory,
            });
        }
        self.settle(key, now);
        if let Some(rec) = self.recs.get(key) {
            if rec.version >= version {
                return Ok(Applied::Stale);
            }
            self.detach(key);
        }
        let rec = Rec {
            value: Some(value.to_vec()),
            deadline,
            version,
        };
        self.make_room(charge(key, &rec), now);
        self.attach(key, rec);
        Ok(Applied::Stored)
    }

    pub fn get(&mut self, key: &[u8], now: u64) -> Option<Vec<u8>> {
        self.settle(key, now);
        match self.recs.get(key) {
            Some(Rec { value: Some(v), .. }) => {
                let v = v.clone();
                self.counters.hits += 1;
                self.order.retain(|k| k != key);
                self.order.push_front(key.to_vec());
                Some(v)
            }
            _ => {
                self.counters.misses += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, key: &[u8], version: Version, now: u64) -> Result<Removed, Error> {
        self.check_key(key)?;
        let grace = self.cfg.tombstone_grace_ms;
        let tomb = Rec {
            value: None,
            deadline: now + grace,
            version,
        };
        let keep = grace > 0 && charge(key, &tomb) <= self.cfg.max_memory;
        self.settle(key, now);
        let was_live = match self.recs.get(key) {
            Some(rec) if rec.version >= version => return Ok(Removed::Stale),
            Some(_) => self.detach(key).value.is_some(),
            None => false,
        };
        if keep {
            self.make_room(charge(key, &tomb), now);
            self.attach(key, tomb);
        }
        Ok(if was_live {
            Removed::Removed
        } else {
            Removed::NotFound
        })
    }

    pub fn touch(&mut self, key: &[u8], deadline: u64, version: Version, now: u64) -> bool {
        self.settle(key, now);
        match self.recs.get(key) {
            Some(rec) if rec.value.is_some() && rec.version < version => {
                let mut rec = self.detach(key);
                rec.deadline = deadline;
                rec.version = version;
                self.make_room(charge(key, &rec), now);
                self.attach(key, rec);
                true
            }
            _ => false,
        }
    }

    pub fn expires_at(&self, key: &[u8], now: u64) -> Option<u64> {
        match self.recs.get(key) {
            Some(rec) if rec.value.is_some() && !dead(rec, now) => Some(rec.deadline),
            _ => None,
        }
    }

    /// Reclaims everything dead at `now`; the count includes tombstones.
    pub fn expire(&mut self, now: u64) -> usize {
        let dead_keys: Vec<Vec<u8>> = self
            .recs
            .iter()
            .filter(|(_, r)| dead(r, now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &dead_keys {
            self.discard(key, now);
        }
        dead_keys.len()
    }

    pub fn live(&self) -> usize {
        self.recs.values().filter(|r| r.value.is_some()).count()
    }

    pub fn tombstones(&self) -> usize {
        self.recs.len() - self.live()
    }
}
