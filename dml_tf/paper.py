"""The paper's facts: its training settings per dataset and the numbers it reports.

Zhang, Xiang, Hospedales, Lu: "Deep Mutual Learning", CVPR 2018. ``DATASET_DEFAULTS``
are the settings of Sec. 4.1, completed where the paper is silent from the sources named
beside each entry (the README's "Paper vs original code" table lists them);
``dml_tf.config`` fills unset ``TrainConfig`` fields from them. The tables are
transcribed from the paper, in %, for ``tools/report.py`` and ``tools/posterior_stats.py``.
"""

# --------------------------------------------------------------------- settings (Sec. 4.1)
DATASET_DEFAULTS = {
    # CIFAR: the paper's SGD + Nesterov 0.9, LR 0.1 x0.1 every 60 epochs, 200 epochs,
    # batch 64; weight decay 5e-4 from WRN (Zagoruyko & Komodakis 2016), whose settings
    # the paper says it follows, not from the DML paper.
    # Departure: a 2-epoch linear learning-rate warm-up (README, "Training stability": at
    # LR 0.1 from step 0, a ResNet-32 DML cohort dies on real CIFAR images in its first
    # 20 steps); --warmup_epochs=0 is the paper's exact schedule.
    "cifar10": dict(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                    lr_schedule="step", lr_decay_epochs=(60, 120, 180), lr_decay_rate=0.1,
                    epochs=200, batch_size=64, weight_decay=5e-4, label_smoothing=0.0,
                    warmup_epochs=2.0),
    # Market-1501: the paper's Adam lr 2e-4, beta1 0.5, beta2 0.999, batch 16; the
    # released scripts' eps 1e-8, label smoothing 0.1, slim weight decay 4e-5 and weight
    # moving average 0.9999 (restored for evaluation); their 200,000 iterations at batch
    # 16 over 12,936 images = 248 epochs.
    "market1501": dict(optimizer="adam", learning_rate=2e-4, beta1=0.5, beta2=0.999,
                       adam_epsilon=1e-8, lr_schedule="constant", epochs=248, batch_size=16,
                       weight_decay=4e-5, label_smoothing=0.1, ema_decay=0.9999,
                       image_size=(224, 224)),
    # ImageNet: the paper's RMSProp decay 0.9, batch 64, LR 0.1 decayed every 20 epochs
    # by an exponential rate of 0.16; momentum 0.9, epsilon 1.0 and weight decay 4e-5 are
    # TF-slim's defaults (train_image_classifier.py, the authors' recipe); the paper gives
    # no epoch count (we use 100).
    "imagenet2012": dict(optimizer="rmsprop", learning_rate=0.1, rmsprop_decay=0.9,
                         rmsprop_momentum=0.9, rmsprop_epsilon=1.0,
                         lr_schedule="exponential", lr_decay_every=20, lr_decay_rate=0.16,
                         epochs=100, batch_size=64, weight_decay=4e-5, label_smoothing=0.0,
                         image_size=(224, 224)),
}
DATASET_DEFAULTS["cifar100"] = dict(DATASET_DEFAULTS["cifar10"])
# Not the paper's: the embedded default, the CIFAR recipe shortened to run in minutes on a
# CPU, with LR 0.01 (at 0.05 or 0.1, resnet32 on the upsampled 8x8 digits diverges in its
# first steps and a DML cohort then settles on near-uniform predictions for epochs).
DATASET_DEFAULTS["digits"] = dict(DATASET_DEFAULTS["cifar10"], epochs=8, lr_decay_epochs=(6,),
                                  learning_rate=0.01, warmup_epochs=0.0)

# Not the paper's: your own image folder (dml_tf/data/folder.py), the CIFAR recipe over 30
# epochs in the paper's schedule shape (x0.1 at 30%, 60% and 90% of the epochs), a fifth of
# each class held out for testing when the folder has no train/ and test/.
DATASET_DEFAULTS["folder"] = dict(DATASET_DEFAULTS["cifar10"], epochs=30, lr_decay_epochs=(9, 18, 27),
                                  validation_split=0.2)

# ------------------------------------------------------------------- reported numbers
SOURCE = ("Zhang, Xiang, Hospedales, Lu: Deep Mutual Learning, CVPR 2018: Table 2 (CIFAR top-1), "
          "Table 3 (Market-1501), Table 4 (distillation), Table 5 (Market-1501 variants)")

# Table 2: top-1 (%) of independent nets (depends only on the net) and of DML pairs.
TABLE2_INDEPENDENT = {
    "cifar10": {"resnet32": 92.47, "wrn_28_10": 95.01, "mobilenet": 93.59},
    "cifar100": {"resnet32": 68.99, "wrn_28_10": 78.69, "mobilenet": 73.65},
}
TABLE2_DML = {  # (net1, net2) -> dataset -> (net1, net2) top-1 %
    ("resnet32", "resnet32"): {"cifar10": (92.68, 92.80), "cifar100": (71.19, 70.75)},
    ("wrn_28_10", "resnet32"): {"cifar10": (95.75, 93.18), "cifar100": (78.96, 70.73)},
    ("mobilenet", "resnet32"): {"cifar10": (94.24, 93.32), "cifar100": (76.13, 71.10)},
    ("mobilenet", "mobilenet"): {"cifar10": (94.10, 94.30), "cifar100": (76.21, 76.10)},
    ("wrn_28_10", "mobilenet"): {"cifar10": (95.73, 94.37), "cifar100": (80.28, 77.39)},
    ("wrn_28_10", "wrn_28_10"): {"cifar10": (95.66, 95.63), "cifar100": (80.28, 80.08)},
}
# Table 3: Market-1501, mobilenet x2, mean of the members: SQ mAP, SQ R1, MQ mAP, MQ R1.
TABLE3 = {  # (mode, imagenet pretrained)
    ("independent", False): (50.15, 76.87, 60.16, 84.06),
    ("dml", False): (54.71, 79.12, 64.10, 85.63),
    ("independent", True): (65.06, 85.01, 74.53, 90.59),
    ("dml", True): (70.51, 89.34, 78.95, 92.81),
}
# Table 4: distilled student (net 2 from frozen net 1) and per-member ind./DML values.
TABLE4_DISTILL = {  # (dataset, teacher, student) -> (metric, value)
    ("cifar100", "wrn_28_10", "resnet32"): ("top-1", 69.48),
    ("cifar100", "mobilenet", "resnet32"): ("top-1", 69.12),
    ("market1501", "inception_v1", "mobilenet"): ("SQ mAP", 52.30),
    ("market1501", "mobilenet", "mobilenet"): ("SQ mAP", 50.07),
}
TABLE4_MARKET = {  # (net1, net2) -> mode -> per-member SQ mAP
    ("inception_v1", "mobilenet"): {"independent": (63.91, 50.15), "dml": (64.42, 58.47)},
    ("mobilenet", "mobilenet"): {"independent": (50.15, 49.87), "dml": (55.28, 54.13)},
}
# Table 5: Market-1501, mobilenet x2 (no pretraining), SQ mAP and R1.
TABLE5 = {"independent+entropy": (50.94, 76.34), "dml+l2": (51.01, 77.58)}

# Sec. 4.7 / Fig. 4(c): mean posterior entropy (nats) on the training images.
POSTERIOR_ENTROPY = {"source": "Zhang et al., CVPR 2018, Sec. 4.7 / Fig. 4(c), ResNet-32 on CIFAR-100",
                     "mean_entropy": {"dml": 1.7099, "independent": 0.2602}}
