//! Preprocessing of every bundled photo against torchvision's tensor (Resize(256),
//! CenterCrop(224), ToTensor, Normalize; saved by `models/make_fixtures.py`).

mod common;
use common::*;
use resnet_edge::preprocess::{load_image, Preprocess};

#[test]
fn photos_match_torchvision_within_0_01_mean_abs() {
    let photos = photos();
    assert!(photos.len() >= 6, "bundled photos missing");
    for photo in photos {
        let want =
            resnet_edge::npy::read_f32(&fixtures().join(format!("inputs/{}.npy", stem(&photo))))
                .unwrap();
        let want = want.to_plain_array_view::<f32>().unwrap();
        let got = Preprocess::default()
            .apply(&load_image(&photo).unwrap())
            .unwrap();
        let got = got.to_plain_array_view::<f32>().unwrap();
        assert_eq!(got.shape(), want.shape());
        let mad = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / got.len() as f64;
        assert!(mad < 0.01, "{}: mean abs diff {mad}", photo.display());
    }
}
