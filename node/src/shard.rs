//! This node's view of the data, as tensors ready for the round: its private shard,
//! the public pool, the test set; and the seeded sampler of private batches.

use crate::seed::{Rng as SeedRng, rng};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;

use crate::data::{Dataset, Location, Normalisation, Samples, Split};
use crate::{Error, Result};

/// Node `node`'s private shard of `split`.
fn shard_of(split: &Split, node: usize) -> Result<&[usize]> {
    split.private.get(node).map(Vec::as_slice).ok_or_else(|| {
        Error::config(
            "node.id",
            format!("node {node} has no shard: the split has {} shards", split.private.len()),
        )
    })
}

/// The tensors one node trains and evaluates on.
pub struct Shard {
    pub private_images: Tensor,
    pub private_labels: Tensor,
    /// The public pool; its labels are never loaded.
    pub public_images: Tensor,
    pub test_images: Tensor,
    pub test_labels: Tensor,
    /// The run's validation set (`data.validation`), `None` when it holds none out.
    pub validation: Option<(Tensor, Tensor)>,
}

impl Shard {
    /// Gathers node `node`'s part of `split` of the loaded `dataset` into tensors,
    /// normalised by `norm`.
    pub fn new(dataset: &Dataset, split: &Split, node: usize, norm: &Normalisation) -> Result<Self> {
        let private = shard_of(split, node)?;
        Self::gather(
            &dataset.train,
            (private, &split.validation),
            (&dataset.train, &split.public),
            &dataset.test,
            &split.test,
            norm,
        )
    }

    /// The same tensors as [`Shard::new`] on the dataset [`Dataset::load`] would load from
    /// `location`, reading only the samples they hold ([`Dataset::load_rows`]): a node's
    /// memory holds its shard, the public pool and the test set, not the dataset. With
    /// `public` (`data.public`), the public pool's rows are that dataset's.
    pub fn load(
        location: &Location,
        public: Option<&Location>,
        split: &Split,
        node: usize,
        norm: &Normalisation,
    ) -> Result<Self> {
        let private = shard_of(split, node)?;
        let ascending = |rows: &mut Vec<usize>| {
            rows.sort_unstable();
            rows.dedup();
        };
        // Indices of a dataset, to positions among the rows held.
        let at = |rows: &[usize], indices: &[usize]| -> Vec<usize> {
            indices
                .iter()
                .map(|i| rows.binary_search(i).expect("every index asked for is held"))
                .collect()
        };
        let mut test_rows = split.test.clone();
        ascending(&mut test_rows);
        let Some(public) = public else {
            let mut train_rows: Vec<usize> = private
                .iter()
                .chain(&split.public)
                .chain(&split.validation)
                .copied()
                .collect();
            ascending(&mut train_rows);
            let (train, test) = Dataset::load_rows(location, &train_rows, &test_rows)?;
            return Self::gather(
                &train,
                (&at(&train_rows, private), &at(&train_rows, &split.validation)),
                (&train, &at(&train_rows, &split.public)),
                &test,
                &at(&test_rows, &split.test),
                norm,
            );
        };
        let mut train_rows: Vec<usize> = private.iter().chain(&split.validation).copied().collect();
        ascending(&mut train_rows);
        let (train, test) = Dataset::load_rows(location, &train_rows, &test_rows)?;
        let mut public_rows = split.public.clone();
        ascending(&mut public_rows);
        let (pool, _) = Dataset::load_rows(public, &public_rows, &[])?;
        if pool.shape != train.shape {
            return Err(Error::Data {
                path: public.path.clone().unwrap_or_default(),
                reason: format!(
                    "the public set's samples are {:?}; the run's are {:?}: they must be the same shape",
                    pool.shape, train.shape
                ),
            });
        }
        Self::gather(
            &train,
            (&at(&train_rows, private), &at(&train_rows, &split.validation)),
            (&pool, &at(&public_rows, &split.public)),
            &test,
            &at(&test_rows, &split.test),
            norm,
        )
    }

    /// `(private, validation)`: rows of `train`; `public`: the set the public pool's
    /// rows are of, and those rows.
    fn gather(
        train: &Samples,
        (private, validation): (&[usize], &[usize]),
        (pool, public): (&Samples, &[usize]),
        test: &Samples,
        tests: &[usize],
        norm: &Normalisation,
    ) -> Result<Self> {
        norm.check(&train.shape)
            .map_err(|e| Error::config("data.normalise", e))?;
        let values = train.sample_len();
        let device = Device::Cpu;
        let images = |values_of: Vec<f32>, rows: usize| Tensor::from_vec(values_of, (rows, values), &device);
        let (private_x, private_y) = train.gather(private, norm);
        let (public_x, _) = pool.gather(public, norm);
        let (test_x, test_y) = test.gather(tests, norm);
        let validation = if validation.is_empty() {
            None
        } else {
            let (x, y) = train.gather(validation, norm);
            Some((
                images(x, validation.len())?,
                Tensor::from_vec(y, validation.len(), &device)?,
            ))
        };
        Ok(Shard {
            private_images: images(private_x, private.len())?,
            private_labels: Tensor::from_vec(private_y, private.len(), &device)?,
            public_images: images(public_x, public.len())?,
            test_images: images(test_x, tests.len())?,
            test_labels: Tensor::from_vec(test_y, tests.len(), &device)?,
            validation,
        })
    }

    /// How many private samples of each of `classes` this shard holds.
    pub fn label_histogram(&self, classes: usize) -> Result<Vec<u32>> {
        let mut histogram = vec![0u32; classes];
        for label in self.private_labels.to_vec1::<u32>()? {
            if let Some(count) = histogram.get_mut(label as usize) {
                *count += 1;
            }
        }
        Ok(histogram)
    }

    pub fn private_len(&self) -> usize {
        self.private_labels.dims()[0]
    }

    pub fn public_len(&self) -> usize {
        self.public_images.dims()[0]
    }

    /// The private images and labels of these rows of the shard (a batch).
    pub fn private_rows(&self, rows: &[u32]) -> Result<(Tensor, Tensor)> {
        let index = Tensor::from_slice(rows, rows.len(), &Device::Cpu)?;
        Ok((
            self.private_images.index_select(&index, 0)?,
            self.private_labels.index_select(&index, 0)?,
        ))
    }

    /// The round's public batch: `size` distinct rows of the public pool drawn from
    /// the round's seed, the same on every node.
    pub fn public_batch(&self, seed: u64, size: usize) -> Result<Tensor> {
        let pool = self.public_len();
        if size > pool {
            return Err(Error::config(
                "exchange.public_batch",
                format!("{size} is larger than the public pool ({pool})"),
            ));
        }
        let chosen = public_rows(seed, pool, size);
        let index = Tensor::from_slice(&chosen, size, &Device::Cpu)?;
        Ok(self.public_images.index_select(&index, 0)?)
    }
}

/// The positions in a public pool of `pool` rows of the round's public batch of `size`
/// rows drawn from `seed` (`size` ≤ `pool`), in batch order: what [`Shard::public_batch`]
/// gathers, and what `wdml privacy` reads an audit record's rows as.
pub fn public_rows(seed: u64, pool: usize, size: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..pool as u32).collect();
    let (chosen, _) = order.partial_shuffle(&mut rng(seed), size);
    chosen.to_vec()
}

/// Draws private mini-batches epoch by epoch: every sample once per epoch, in a fresh
/// seeded order each epoch.
pub struct BatchSampler {
    order: Vec<u32>,
    next: usize,
    batch: usize,
    rng: SeedRng,
    /// Reshuffles since the start: with `next`, the sampler's whole position.
    epoch: u64,
}

/// Where a sampler stands, for a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SamplerPosition {
    pub epoch: u64,
    pub next: usize,
}

impl BatchSampler {
    pub fn new(samples: usize, batch: usize, seed: u64) -> Self {
        let mut rng = rng(seed);
        let mut order: Vec<u32> = (0..samples as u32).collect();
        order.shuffle(&mut rng);
        BatchSampler {
            order,
            next: 0,
            batch: batch.min(samples).max(1),
            rng,
            epoch: 0,
        }
    }

    /// The sampler `new(samples, batch, seed)` becomes after drawing up to `position`:
    /// the same order and the same batches from there on.
    pub fn resume(samples: usize, batch: usize, seed: u64, position: SamplerPosition) -> Result<Self> {
        let mut sampler = Self::new(samples, batch, seed);
        if position.next > sampler.order.len() {
            return Err(Error::config(
                "checkpoint",
                format!("sampler position {} is past its {} samples", position.next, samples),
            ));
        }
        for _ in 0..position.epoch {
            sampler.order.shuffle(&mut sampler.rng);
        }
        sampler.epoch = position.epoch;
        sampler.next = position.next;
        Ok(sampler)
    }

    pub fn position(&self) -> SamplerPosition {
        SamplerPosition {
            epoch: self.epoch,
            next: self.next,
        }
    }

    /// The next batch's images and labels.
    pub fn next_batch(&mut self, shard: &Shard) -> Result<(Tensor, Tensor)> {
        if self.next + self.batch > self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.epoch += 1;
            self.next = 0;
        }
        let rows = &self.order[self.next..self.next + self.batch];
        self.next += self.batch;
        shard.private_rows(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Partition, SplitConfig, split};

    /// What a node loads for itself (its rows only) is, tensor for tensor, what it
    /// would gather from the whole dataset: the seeded figures cannot move.
    #[test]
    fn a_shard_loaded_row_by_row_is_the_one_gathered_from_the_whole_dataset() {
        let whole = Dataset::embedded().unwrap();
        for partition in [Partition::Iid, Partition::Dirichlet { alpha: 0.1 }] {
            let cfg = SplitConfig {
                seed: 11,
                nodes: 6,
                partition: partition.clone(),
                public_pool: 300,
                test_size: 250,
                public_from: None,
                public_overlap: 0.0,
                validation: 0,
            };
            let split = split(&Dataset::load_labels(&Location::default()).unwrap(), &cfg).unwrap();
            assert_eq!(split, crate::data::split(&whole, &cfg).unwrap());
            for node in [0, 5] {
                let (a, b) = (
                    Shard::new(&whole, &split, node, &Normalisation::fashion_mnist()).unwrap(),
                    Shard::load(
                        &Location::default(),
                        None,
                        &split,
                        node,
                        &Normalisation::fashion_mnist(),
                    )
                    .unwrap(),
                );
                let flat = |t: &Tensor| {
                    t.flatten_all()
                        .unwrap()
                        .to_dtype(candle_core::DType::F32)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                };
                for (x, y) in [
                    (&a.private_images, &b.private_images),
                    (&a.private_labels, &b.private_labels),
                    (&a.public_images, &b.public_images),
                    (&a.test_images, &b.test_images),
                    (&a.test_labels, &b.test_labels),
                ] {
                    assert_eq!(x.dims(), y.dims());
                    assert_eq!(flat(x), flat(y), "{partition} node {node}");
                }
            }
        }
        assert!(
            Shard::load(
                &Location::default(),
                None,
                &crate::data::split(
                    &whole,
                    &SplitConfig {
                        seed: 1,
                        nodes: 2,
                        partition: Partition::Iid,
                        public_pool: 10,
                        test_size: 5,
                        public_from: None,
                        public_overlap: 0.0,
                        validation: 0,
                    }
                )
                .unwrap(),
                2,
                &Normalisation::fashion_mnist()
            )
            .is_err()
        );
    }

    #[test]
    fn sampler_visits_every_sample_once_per_epoch() {
        let samples = 10;
        let labels: Vec<u32> = (0..samples as u32).collect();
        let shard = Shard {
            private_images: Tensor::zeros((samples, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
            private_labels: Tensor::from_vec(labels, samples, &Device::Cpu).unwrap(),
            public_images: Tensor::zeros((4, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
            test_images: Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
            test_labels: Tensor::zeros(1, candle_core::DType::U32, &Device::Cpu).unwrap(),
            validation: None,
        };
        let mut sampler = BatchSampler::new(samples, 5, 7);
        let mut seen: Vec<u32> = Vec::new();
        for _ in 0..2 {
            seen.extend(sampler.next_batch(&shard).unwrap().1.to_vec1::<u32>().unwrap());
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<u32>>());
        // A sampler resumed at a position draws what the original draws from there.
        let mut original = BatchSampler::new(samples, 3, 9);
        for _ in 0..5 {
            original.next_batch(&shard).unwrap();
        }
        let mut resumed = BatchSampler::resume(samples, 3, 9, original.position()).unwrap();
        for _ in 0..7 {
            let (a, b) = (
                original.next_batch(&shard).unwrap().1,
                resumed.next_batch(&shard).unwrap().1,
            );
            assert_eq!(a.to_vec1::<u32>().unwrap(), b.to_vec1::<u32>().unwrap());
        }
        assert!(
            shard.public_batch(1, 5).is_err(),
            "a batch larger than the pool is refused"
        );
        assert_eq!(shard.public_batch(1, 3).unwrap().dims(), [3, 1]);
        // The batch draws from the whole pool, the rows data.public_overlap appends
        // included: 600 of 1,200 rows, the last 200 of them members, over 20 rounds.
        let drawn: Vec<u32> = (0..20).flat_map(|seed| public_rows(seed, 1200, 600)).collect();
        let members = drawn.iter().filter(|&&p| p >= 1000).count() as f64 / drawn.len() as f64;
        assert!((members - 200.0 / 1200.0).abs() < 0.02, "{members}");
        assert!(drawn.iter().all(|&p| p < 1200));
    }
}
