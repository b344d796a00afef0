use super::*;

fn device(index: u32) -> GpuDevice {
    GpuDevice {
        index,
        uuid: format!("GPU-{index:08}"),
        name: "Fake".into(),
        memory_mib: 1000,
    }
}

#[test]
fn nvidia_smi_lines_are_read() {
    let text = "0, GPU-8f6c1b2a-0000-1111-2222-333344445555, NVIDIA H100 80GB HBM3, 81559 MiB\n\
                1, GPU-aa, Odd, Name, 40960 MiB\n\n";
    let d = parse_devices(text).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].index, 0);
    assert_eq!(d[0].uuid, "GPU-8f6c1b2a-0000-1111-2222-333344445555");
    assert_eq!(d[0].name, "NVIDIA H100 80GB HBM3");
    assert_eq!(d[0].memory_mib, 81559);
    assert_eq!(d[1].name, "Odd, Name");
    assert_eq!(d[1].memory_mib, 40960);
    let e = parse_devices("No devices were found\n").unwrap_err();
    assert!(e.contains("No devices were found"), "{e}");
    assert!(parse_devices("x, GPU-1, a, 1 MiB").is_err());

    assert!(answer_of("").is_err());
    let e = answer_of("WARNING: infoROM is corrupted at gpu 0000:01:00.0\n").unwrap_err();
    assert!(e.contains("infoROM"), "{e}");
    assert_eq!(answer_of("GPU-a, 3, 4\n").unwrap().len(), 1);
    let s = parse_samples("GPU-a, 97, 40211\nGPU-b, [N/A], 12\n\n");
    assert_eq!(
        s,
        vec![
            Sample {
                uuid: "GPU-a".into(),
                util: Some(97.0),
                memory: Some(40211)
            },
            Sample {
                uuid: "GPU-b".into(),
                util: None,
                memory: Some(12)
            }
        ]
    );
}

fn sample(uuid: &str, util: f64, memory: u64) -> Sample {
    Sample {
        uuid: uuid.into(),
        util: Some(util),
        memory: Some(memory),
    }
}

#[tokio::test]
async fn leases_are_exclusive_and_keep_their_own_telemetry() {
    let gpus = Gpus::start(
        vec![vec![device(0), device(1)], vec![device(2), device(3)]],
        Duration::from_secs(3600),
    );
    assert_eq!(gpus.slots(), 2);
    let a = gpus.lease(TrialId(1), 0).unwrap();
    let b = gpus.lease(TrialId(2), 0).unwrap();
    assert!(gpus.lease(TrialId(3), 0).is_none(), "two sets, two leases");
    assert_eq!(a.view().visible(), "GPU-00000000,GPU-00000001");
    assert_eq!(b.view().visible(), "GPU-00000002,GPU-00000003");

    let all = |m: u64| {
        Ok((0..4)
            .map(|i| sample(&format!("GPU-{i:08}"), 10.0 * f64::from(i as u32), m + i))
            .collect())
    };
    gpus.sampled(all(100));
    gpus.sampled(all(500));
    let u = a.view().usage();
    assert_eq!(u.samples, 2);
    assert_eq!(u.peak_memory_mib, Some(501), "the most on any one device");
    assert_eq!(u.mean_util_pct, Some(5.0), "(0 + 10) / 2 over both samples");
    assert_eq!(b.view().usage().mean_util_pct, Some(25.0));

    // A new lease starts its own telemetry; the old view reads nothing of it.
    let view = a.view();
    drop(a);
    let c = gpus.lease(TrialId(3), 0).unwrap();
    assert_eq!(c.view().visible(), "GPU-00000000,GPU-00000001");
    assert_eq!(c.view().usage().samples, 0);
    assert_eq!(view.usage().samples, 0);
    view.finished(Some("uncorrectable ECC error"));
    assert_eq!(
        gpus.status()[0].running,
        Some(Holder {
            trial: TrialId(3),
            seed: 0,
            eval: false
        })
    );
    assert_eq!(gpus.status()[0].out, None);
}

#[tokio::test]
async fn a_waiting_eval_gets_the_next_free_set_ahead_of_train_runs() {
    let gpus = Gpus::start(
        vec![vec![device(0)], vec![device(1)]],
        Duration::from_secs(3600),
    );
    let woken = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let w = woken.clone();
    gpus.set_waker(Box::new(move || {
        w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let a = gpus.lease(TrialId(1), 0).unwrap();
    let b = gpus.lease(TrialId(2), 0).unwrap();
    let waiter = {
        let gpus = gpus.clone();
        tokio::spawn(async move { gpus.lease_eval(TrialId(1), 0).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    drop(b);
    // The freed set is the eval's: a train run gets none meanwhile.
    assert!(gpus.lease(TrialId(3), 0).is_none());
    let eval = waiter.await.unwrap().expect("a set for the eval");
    assert_eq!(eval.view().visible(), "GPU-00000001");
    let h = gpus.status()[1].running.unwrap();
    assert!(h.eval && h.trial == TrialId(1));
    assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 0);
    drop(eval);
    assert_eq!(
        woken.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the executor is told"
    );
    let mut c = gpus.lease(TrialId(3), 0).expect("no eval waits now");
    assert_eq!(c.view().visible(), "GPU-00000001");
    // A train run's lease handed on to its eval.
    gpus.sampled(Ok(vec![sample("GPU-00000001", 10.0, 99)]));
    assert_eq!(c.view().usage().samples, 1);
    c.to_eval();
    assert!(gpus.status()[1].running.unwrap().eval);
    assert_eq!(c.view().usage().samples, 0, "the eval's own telemetry");
    drop(c);
    assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 2);
    drop(a);

    // An eval that is given up while it waits stops holding train runs back.
    let d = gpus.lease(TrialId(4), 0).unwrap();
    let waiter = {
        let gpus = gpus.clone();
        tokio::spawn(async move { gpus.lease_eval(TrialId(5), 0).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    waiter.abort();
    let _ = waiter.await;
    drop(d);
    assert!(gpus.lease(TrialId(6), 0).is_some());
}

#[tokio::test]
async fn a_device_gone_twice_takes_its_set_out_of_rotation() {
    let gpus = Gpus::start(
        vec![vec![device(0)], vec![device(1)]],
        Duration::from_secs(3600),
    );
    let a = gpus.lease(TrialId(1), 0).unwrap();
    let only0 = || Ok(vec![sample("GPU-00000000", 50.0, 10)]);
    gpus.sampled(only0());
    assert_eq!(gpus.slots(), 2, "one miss is not enough");
    gpus.sampled(Err("nvidia-smi did not answer".into()));
    assert_eq!(gpus.slots(), 2, "no verdict from a failed call");
    gpus.sampled(only0());
    assert_eq!(gpus.slots(), 1, "set 1 is out, and free");
    let st = gpus.status();
    assert!(st[1]
        .out
        .as_deref()
        .unwrap()
        .contains("GPU 1 (GPU-00000001) is gone"));
    assert!(a.view().vanished().is_none());
    let b = gpus.lease(TrialId(2), 0);
    assert!(b.is_none(), "the vanished set is not leased");

    // Now GPU 0 goes too, under its run: the run's view knows, and the
    // set counts as a slot until the run ends.
    gpus.sampled(Ok(Vec::new()));
    gpus.sampled(Ok(Vec::new()));
    assert!(a.view().vanished().unwrap().contains("GPU 0"));
    assert_eq!(gpus.slots(), 1);
    drop(a);
    assert_eq!(gpus.slots(), 0);
    assert!(gpus.lease(TrialId(3), 0).is_none());
    assert!(
        gpus.lease_eval(TrialId(3), 0).await.is_none(),
        "no set to wait for"
    );
}

#[tokio::test]
async fn repeated_device_errors_take_a_set_out_but_never_the_last() {
    let gpus = Gpus::start(
        vec![vec![device(0)], vec![device(1)]],
        Duration::from_secs(3600),
    );
    let run = |id: u64| gpus.lease(TrialId(id), 0).unwrap();
    // Errors interrupted by a clean run start counting again.
    for (id, err) in [(1, true), (2, true), (3, false), (4, true), (5, true)] {
        let l = run(id);
        l.view()
            .finished(err.then_some("GPU has fallen off the bus"));
    }
    assert_eq!(gpus.slots(), 2);
    let l = run(6);
    l.view().finished(Some("GPU has fallen off the bus"));
    drop(l);
    assert_eq!(gpus.slots(), 1);
    assert!(gpus.status()[0]
        .out
        .as_deref()
        .unwrap()
        .contains("3 runs in a row"));
    // Set 1 is now the last in rotation: it stays.
    for id in 7..12 {
        let l = run(id);
        assert_eq!(l.view().visible(), "GPU-00000001");
        l.view().finished(Some("GPU has fallen off the bus"));
    }
    assert_eq!(gpus.slots(), 1);
}

#[test]
fn logs_tell_device_out_of_memory_and_device_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let torch = write(
        "a",
        "step 1\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n",
    );
    let candle = write(
        "b",
        "Error: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")\n",
    );
    let ecc = write(
        "c",
        "RuntimeError: CUDA error: uncorrectable ECC error encountered\n",
    );
    let bug = write("d", "IndexError: index 7 is out of bounds\nKilled\n");
    let v = read_logs(&[&torch]);
    assert!(v.out_of_memory && v.device_error.is_none(), "{v:?}");
    assert!(read_logs(&[&bug, &candle]).out_of_memory);
    let v = read_logs(&[&ecc]);
    assert!(!v.out_of_memory);
    assert_eq!(
        v.device_error.as_deref(),
        Some("RuntimeError: CUDA error: uncorrectable ECC error encountered")
    );
    assert_eq!(
        read_logs(&[&bug, &dir.path().join("missing")]),
        LogVerdict::default()
    );
}

#[test]
fn an_inherited_cuda_visible_devices_restricts_auto() {
    let found = || (0..4).map(device).collect::<Vec<_>>();
    let ix = |v: Vec<GpuDevice>| v.iter().map(|d| d.index).collect::<Vec<_>>();
    assert_eq!(ix(restrict(found(), None).unwrap()), [0, 1, 2, 3]);
    assert_eq!(ix(restrict(found(), Some("")).unwrap()), Vec::<u32>::new());
    assert_eq!(ix(restrict(found(), Some("2, 0")).unwrap()), [2, 0]);
    assert_eq!(
        ix(restrict(found(), Some("GPU-00000003,1,GPU-00000003")).unwrap()),
        [3, 1]
    );
    let e = restrict(found(), Some("5")).unwrap_err();
    assert!(e.contains("`5`, which nvidia-smi does not list"), "{e}");
    let e = restrict(found(), Some("GPU-0000000")).unwrap_err();
    assert!(e.contains("more than one GPU"), "{e}");
    let e = restrict(found(), Some("MIG-abc")).unwrap_err();
    assert!(e.contains("neither a GPU index nor a GPU UUID"), "{e}");
}

#[test]
fn placements_describe_themselves() {
    let p = Placement::Gpus {
        sets: vec![vec![device(0), device(1)]],
        idle: vec![device(2)],
    };
    let s = p.describe(1);
    assert!(s.contains("1 at once, 2 GPU(s) each"), "{s}");
    assert!(s.contains("GPU 2 left idle"), "{s}");
    let s = Placement::Cpu {
        why: Some("no nvidia-smi".into()),
    }
    .describe(3);
    assert_eq!(s, "no nvidia-smi: trials run here on CPU slots, 3 at once");
}
