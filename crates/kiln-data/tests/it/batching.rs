//! Padding, masks, -100 label masking, length grouping, seeded shuffling, resume.

use kiln_data::*;

use crate::common::*;

fn feat(len: usize, target: Target) -> Features {
    Features {
        input_ids: (1..=len as u32).collect(),
        token_type_ids: vec![0; len],
        target,
    }
}

fn sst2_features() -> Vec<Features> {
    let ex = load_sst2(
        &sample("sentiment/train.tsv"),
        Split::Train,
        &LoadOptions::default(),
    )
    .unwrap()
    .examples;
    tokenize_sentiment(&bert_tokenizer(), &ex, Some(64))
        .unwrap()
        .features
}

#[test]
fn right_and_left_padding_with_masks() {
    let fs = vec![
        feat(3, Target::Class(1)),
        feat(1, Target::Class(0)),
        feat(2, Target::Class(-1)),
    ];
    let opts = BatchOptions {
        batch_size: 3,
        pad_id: 9,
        ..Default::default()
    };
    let b = Batcher::new(fs.clone(), opts.clone())
        .unwrap()
        .collate(&[0, 1, 2]);
    assert_eq!(
        b.input_ids,
        vec![vec![1, 2, 3], vec![1, 9, 9], vec![1, 2, 9]]
    );
    assert_eq!(
        b.attention_mask,
        vec![vec![1, 1, 1], vec![1, 0, 0], vec![1, 1, 0]]
    );
    assert_eq!(b.token_type_ids, vec![vec![0; 3]; 3]);
    assert_eq!(b.labels, Labels::Class(vec![1, 0, -1]));
    assert_eq!(b.indices, [0, 1, 2]);

    let left = Batcher::new(
        fs.clone(),
        BatchOptions {
            padding_side: PaddingSide::Left,
            ..opts.clone()
        },
    )
    .unwrap();
    let b = left.collate(&[1, 2]);
    assert_eq!(
        b.input_ids,
        vec![vec![9, 1], vec![1, 2]],
        "padded to the batch's longest (dynamic)"
    );
    assert_eq!(b.attention_mask, vec![vec![0, 1], vec![1, 1]]);

    let m = Batcher::new(
        fs,
        BatchOptions {
            pad_to_multiple_of: Some(4),
            ..opts
        },
    )
    .unwrap();
    assert_eq!(m.collate(&[0]).input_ids, vec![vec![1, 2, 3, 9]]);
}

#[test]
fn token_labels_masked_with_ignore_index() {
    let fs = vec![
        feat(2, Target::Tokens(vec![5, 6, 1])),
        feat(4, Target::Tokens(vec![7, 1])),
    ];
    let b = Batcher::new(
        fs,
        BatchOptions {
            batch_size: 2,
            pad_id: 0,
            ..Default::default()
        },
    )
    .unwrap()
    .collate(&[0, 1]);
    assert_eq!(
        b.labels,
        Labels::Tokens(vec![vec![5, 6, 1], vec![7, 1, IGNORE_INDEX]])
    );
    assert_eq!(IGNORE_INDEX, -100);
    assert_eq!(b.attention_mask, vec![vec![1, 1, 0, 0], vec![1, 1, 1, 1]]);
    // Teacher forcing inputs (T5: start = pad = 0).
    assert_eq!(
        b.decoder_input_ids(0, 0).unwrap(),
        vec![vec![0, 5, 6], vec![0, 7, 1]]
    );
    let fs = vec![
        feat(1, Target::Tokens(vec![5, 1])),
        feat(1, Target::Tokens(vec![5, 6, 7, 1])),
    ];
    let b = Batcher::new(fs, BatchOptions::default())
        .unwrap()
        .collate(&[0, 1]);
    assert_eq!(
        b.decoder_input_ids(2, 1).unwrap(),
        vec![vec![2, 5, 1, 1], vec![2, 5, 6, 7]]
    );

    // Real seq2seq features from the tokenizer.
    let tok = t5_tokenizer();
    let pairs = PromptTemplate::default().apply(
        &load_sst2(
            &sample("sentiment/validation.jsonl"),
            Split::Validation,
            &LoadOptions::default(),
        )
        .unwrap()
        .examples,
    );
    let t = tokenize_seq2seq(
        &tok,
        &pairs,
        Seq2SeqLengths {
            max_source_len: Some(64),
            max_target_len: Some(8),
        },
    )
    .unwrap();
    let batcher = Batcher::new(
        t.features,
        BatchOptions {
            batch_size: 16,
            pad_id: 0,
            ..Default::default()
        },
    )
    .unwrap();
    for (_, b) in batcher.epoch(0) {
        let Labels::Tokens(rows) = &b.labels else {
            panic!()
        };
        for (row, &i) in rows.iter().zip(&b.indices) {
            let Target::Tokens(y) = &batcher.features()[i].target else {
                panic!()
            };
            assert!(row[..y.len()].iter().zip(y).all(|(a, b)| *a == *b as i64));
            assert!(row[y.len()..].iter().all(|&x| x == IGNORE_INDEX));
        }
    }
}

#[test]
fn mixed_targets_and_bad_options_are_errors() {
    let fs = vec![feat(1, Target::Class(1)), feat(1, Target::Tokens(vec![1]))];
    assert!(matches!(
        Batcher::new(fs, BatchOptions::default()),
        Err(Error::Input(_))
    ));
    assert!(Batcher::new(
        vec![],
        BatchOptions {
            batch_size: 0,
            ..Default::default()
        }
    )
    .is_err());
    let empty = Batcher::new(vec![], BatchOptions::default()).unwrap();
    assert_eq!(empty.num_batches(), 0);
    assert_eq!(empty.epoch(0).count(), 0);
}

fn covers_once(plan: &[Vec<usize>], n: usize) {
    let mut all: Vec<usize> = plan.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(
        all,
        (0..n).collect::<Vec<_>>(),
        "every example exactly once"
    );
}

fn padded_tokens(b: &Batcher, plan: &[Vec<usize>]) -> usize {
    plan.iter()
        .map(|ix| {
            let lens: Vec<usize> = ix
                .iter()
                .map(|&i| b.features()[i].input_ids.len())
                .collect();
            lens.iter().max().unwrap() * lens.len() - lens.iter().sum::<usize>()
        })
        .sum()
}

#[test]
fn length_grouped_batches_cover_every_example_once() {
    let fs = sst2_features();
    let n = fs.len();
    let grouped = Batcher::new(
        fs.clone(),
        BatchOptions {
            batch_size: 8,
            shuffle: true,
            seed: 3,
            group_by_length: true,
            group_chunks: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let plain = Batcher::new(
        fs,
        BatchOptions {
            batch_size: 8,
            shuffle: true,
            seed: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(grouped.num_batches(), n.div_ceil(8));
    for epoch in 0..3 {
        let g = grouped.epoch_plan(epoch);
        covers_once(&g, n);
        covers_once(&plain.epoch_plan(epoch), n);
        assert_eq!(g.len(), grouped.num_batches());
        assert!(padded_tokens(&grouped, &g) < padded_tokens(&plain, &plain.epoch_plan(epoch)) / 2);
        // The batches themselves (not only the plan) hold each example once.
        let mut seen: Vec<usize> = grouped.epoch(epoch).flat_map(|(_, b)| b.indices).collect();
        seen.sort();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }
    // drop_last: only full batches.
    let fs = sst2_features();
    let d = Batcher::new(
        fs,
        BatchOptions {
            batch_size: 7,
            shuffle: true,
            group_by_length: true,
            drop_last: true,
            ..Default::default()
        },
    )
    .unwrap();
    let plan = d.epoch_plan(0);
    assert_eq!(plan.len(), 240 / 7);
    assert!(plan.iter().all(|b| b.len() == 7));
}

#[test]
fn shuffling_is_deterministic_per_seed() {
    let fs = sst2_features();
    let mk = |seed: u64, group: bool| {
        Batcher::new(
            fs.clone(),
            BatchOptions {
                batch_size: 8,
                shuffle: true,
                seed,
                group_by_length: group,
                ..Default::default()
            },
        )
        .unwrap()
    };
    for group in [false, true] {
        let (a, a2, b) = (mk(1, group), mk(1, group), mk(2, group));
        assert_eq!(a.epoch_plan(0), a2.epoch_plan(0), "same seed, same order");
        assert_ne!(a.epoch_plan(0), b.epoch_plan(0), "different seeds differ");
        assert_ne!(a.epoch_plan(0), a.epoch_plan(1), "epochs differ");
        assert_eq!(a.epoch_plan(5), a2.epoch_plan(5));
    }
    let fixed = Batcher::new(
        fs,
        BatchOptions {
            batch_size: 8,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        fixed.epoch_plan(0).concat(),
        (0..240).collect::<Vec<_>>(),
        "no shuffle: input order"
    );
    assert_eq!(fixed.epoch_plan(0), fixed.epoch_plan(1));

    // The generator is splitmix64 itself, so orders never change with crate versions.
    let mut g = SplitMix64::new(0);
    assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
}

#[test]
fn resume_from_a_position() {
    let b = Batcher::new(
        sst2_features(),
        BatchOptions {
            batch_size: 16,
            shuffle: true,
            seed: 11,
            group_by_length: true,
            group_chunks: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let full: Vec<(Position, Batch)> = b.epoch(1).collect();
    assert_eq!(full.len(), 15);
    assert_eq!(full[4].0, Position { epoch: 1, batch: 4 });

    let mut it = b.iter_from(Position { epoch: 1, batch: 0 });
    let head: Vec<_> = it.by_ref().take(6).collect();
    let saved = it.position();
    assert_eq!(saved, Position { epoch: 1, batch: 6 });
    // A checkpoint stores the position; a fresh batcher (same data and options) continues identically.
    let json = serde_json::to_string(&saved).unwrap();
    let restored: Position = serde_json::from_str(&json).unwrap();
    let b2 = b.clone();
    let mut rest = b2.iter_from(restored);
    assert_eq!(rest.len(), 9);
    let tail: Vec<_> = rest.by_ref().collect();
    assert_eq!([head, tail].concat(), full);
    assert_eq!(
        rest.position(),
        Position { epoch: 2, batch: 0 },
        "after the last batch: the next epoch"
    );
    assert_eq!(
        b.iter_from(Position {
            epoch: 1,
            batch: 99
        })
        .count(),
        0
    );
}
