//! Where partitions go: new ones at creation, and a fenced broker's at failover.
//!
//! One rule for both, as Kafka spreads a topic's leaders: the live broker owning the fewest
//! partitions of the topic, then the fewest in all, ties to the lowest id. Counting the topic
//! first matters: a node without the 50-partition internal topics would otherwise take every
//! partition of the next topics (and all of a failover's, opening them in two rounds).
//! Placement is a pure function of the replicated state, so the state machine runs it at
//! apply time and every replica computes the same owners.

use crate::{ClusterState, PartitionMeta};
use std::collections::BTreeMap;

/// The live brokers' partition counts, updated as partitions are placed.
pub(crate) struct Placer {
    /// Live (registered, unfenced) broker -> partitions it owns.
    total: BTreeMap<u64, usize>,
}

/// One topic's partition counts per live broker, for [`Placer::place`].
pub(crate) struct TopicLoad(BTreeMap<u64, usize>);

impl Placer {
    /// `None` while no broker is live (nodes that never registered as brokers take no
    /// part: a single node of old, or one that has not registered yet).
    pub(crate) fn new(state: &ClusterState) -> Option<Placer> {
        let mut total: BTreeMap<u64, usize> = state
            .brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(id, _)| (*id, 0))
            .collect();
        if total.is_empty() {
            return None;
        }
        for p in state.topics.values().flat_map(|t| &t.partitions) {
            if let Some(n) = total.get_mut(&p.owner) {
                *n += 1;
            }
        }
        Some(Placer { total })
    }

    /// The counts of a topic whose partitions are `partitions` (none for a new topic).
    pub(crate) fn topic(&self, partitions: &[PartitionMeta]) -> TopicLoad {
        let mut load: BTreeMap<u64, usize> = self.total.keys().map(|id| (*id, 0)).collect();
        for p in partitions {
            if let Some(n) = load.get_mut(&p.owner) {
                *n += 1;
            }
        }
        TopicLoad(load)
    }

    /// The owner for one more partition of the topic `load` counts, counted as placed.
    pub(crate) fn place(&mut self, load: &mut TopicLoad) -> u64 {
        let to = self
            .total
            .iter()
            .min_by_key(|(id, total)| (load.0.get(id).copied(), **total, **id))
            .map(|(id, _)| *id)
            // `new` refused an empty set, and brokers are never removed from a placer.
            .unwrap_or_default();
        for n in [self.total.get_mut(&to), load.0.get_mut(&to)]
            .into_iter()
            .flatten()
        {
            *n += 1;
        }
        to
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BrokerRegistration;

    fn brokers(live: &[u64], fenced: &[u64]) -> ClusterState {
        let mut s = ClusterState::default();
        for (&id, fenced) in live
            .iter()
            .map(|id| (id, false))
            .chain(fenced.iter().map(|id| (id, true)))
        {
            s.brokers.insert(
                id,
                BrokerRegistration {
                    epoch: id,
                    incarnation: [id as u8; 16],
                    fenced,
                    fenced_at_ms: 0,
                },
            );
        }
        s
    }

    #[test]
    fn a_new_topic_spreads_evenly_over_the_live_brokers_and_skips_fenced_ones() {
        let st = brokers(&[1, 2, 3], &[4]);
        let mut placer = Placer::new(&st).unwrap();
        let mut load = placer.topic(&[]);
        let owners: Vec<u64> = (0..7).map(|_| placer.place(&mut load)).collect();
        assert_eq!(owners, [1, 2, 3, 1, 2, 3, 1]);
        // The next topic starts where the cluster is least loaded.
        let mut load = placer.topic(&[]);
        assert_eq!(placer.place(&mut load), 2);
    }

    #[test]
    fn without_a_live_broker_there_is_no_placement() {
        assert!(Placer::new(&ClusterState::default()).is_none());
        assert!(Placer::new(&brokers(&[], &[1, 2])).is_none());
    }
}
