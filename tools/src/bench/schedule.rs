//! When each target runs in a comparison split into rounds: the order of
//! every round and the seed each round uses.
//!
//! The storage under test drifts in speed over time, so a target that always
//! ran first (or last) would carry that drift into the ratios. Rotating the
//! order by one target per round puts every target in every position equally
//! often once the number of rounds is a multiple of the number of targets.

use super::rng::Rng;

/// The order in which `targets` targets (indices into the `--target` list)
/// run in round `round` (counting from 0): the list rotated so that target
/// `round % targets` runs first.
pub fn round_order(round: usize, targets: usize) -> impl Iterator<Item = usize> {
    (0..targets).map(move |i| (round % targets + i) % targets)
}

/// The seed of round `round`: the run's own seed in round 0 (so a single
/// round runs exactly what `--seed` says), and a seed derived from it in
/// later rounds, so that each round picks fresh offsets and writes fresh
/// data. Every target gets the same seed in the same round.
pub fn round_seed(seed: u64, round: usize) -> u64 {
    let mut rng = Rng::new(seed);
    (0..round).fold(seed, |_, _| rng.next_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(round: usize, targets: usize) -> Vec<usize> {
        round_order(round, targets).collect()
    }

    #[test]
    fn each_round_starts_with_the_next_target() {
        assert_eq!(order(0, 3), [0, 1, 2]);
        assert_eq!(order(1, 3), [1, 2, 0]);
        assert_eq!(order(2, 3), [2, 0, 1]);
        assert_eq!(order(3, 3), [0, 1, 2]);
        assert_eq!(order(7, 1), [0]);
        assert_eq!(order(5, 0), Vec::<usize>::new());
    }

    #[test]
    fn every_target_takes_every_position_equally_often() {
        for targets in 1..=5 {
            let rounds = targets * 3;
            // counts[target][position]
            let mut counts = vec![vec![0; targets]; targets];
            for round in 0..rounds {
                let order = order(round, targets);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..targets).collect::<Vec<_>>(), "a permutation");
                for (position, &target) in order.iter().enumerate() {
                    counts[target][position] += 1;
                }
            }
            assert!(counts.iter().flatten().all(|&n| n == 3), "{counts:?}");
        }
    }

    #[test]
    fn round_zero_keeps_the_seed_and_later_rounds_differ() {
        assert_eq!(round_seed(42, 0), 42);
        let seeds: Vec<u64> = (0..8).map(|r| round_seed(42, r)).collect();
        for (i, a) in seeds.iter().enumerate() {
            assert!(seeds[i + 1..].iter().all(|b| a != b), "{seeds:?}");
        }
        assert_eq!(round_seed(42, 5), round_seed(42, 5));
        assert_ne!(round_seed(42, 1), round_seed(43, 1));
    }
}
