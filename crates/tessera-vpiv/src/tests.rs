//! Drives the card's APDU handler directly: every instruction's success and failure status
//! words, chaining, GET RESPONSE, bad APDUs, persistence, faults and a random-APDU run.

use super::apdu::StatusWord;
use super::attestation::{DeviceFacts, TestRoot};
use super::card::{CardReply, FaultPlan, VirtualCard};
use super::mgmkey::{DEFAULT_MANAGEMENT_KEY, ManagementAlgorithm, ManagementKey};
use super::state::CardState;
use super::tlv;

fn facts(firmware: [u8; 3]) -> DeviceFacts {
    DeviceFacts {
        firmware,
        serial: 15_732_500,
        form_factor: 0x04,
        fips: false,
        cspn: false,
    }
}

fn new_card(firmware: [u8; 3]) -> VirtualCard {
    new_card_with(firmware, FaultPlan::default())
}

fn new_card_with(firmware: [u8; 3], faults: FaultPlan) -> VirtualCard {
    let root = TestRoot::generate().unwrap();
    VirtualCard::new(
        CardState::factory(facts(firmware), &root).unwrap(),
        None,
        faults,
    )
}

fn hexb(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

/// Sends raw bytes; returns (data, SW).
fn send_raw(card: &mut VirtualCard, raw: &[u8]) -> (Vec<u8>, u16) {
    match card.process(raw) {
        CardReply::Response(r) => {
            let (data, sw) = r.split_at(r.len() - 2);
            (data.to_vec(), u16::from_be_bytes([sw[0], sw[1]]))
        }
        CardReply::Disconnect => panic!("unexpected disconnect"),
    }
}

/// Builds a short (or extended if needed) APDU with Le absent.
fn apdu(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![cla, ins, p1, p2];
    if data.len() > 255 {
        out.push(0);
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    } else if !data.is_empty() {
        out.push(data.len() as u8);
    }
    out.extend_from_slice(data);
    out
}

fn send(card: &mut VirtualCard, ins: u8, p1: u8, p2: u8, data: &[u8]) -> (Vec<u8>, u16) {
    send_raw(card, &apdu(0, ins, p1, p2, data))
}

/// Sends and follows 61xx with GET RESPONSE, as clients do.
fn send_all(card: &mut VirtualCard, ins: u8, p1: u8, p2: u8, data: &[u8]) -> (Vec<u8>, u16) {
    let (mut out, mut sw) = send(card, ins, p1, p2, data);
    while sw >> 8 == 0x61 {
        let (more, s) = send_raw(card, &[0, 0xC0, 0, 0, (sw & 0xFF) as u8]);
        out.extend(more);
        sw = s;
    }
    (out, sw)
}

fn pin_block(pin: &[u8]) -> Vec<u8> {
    let mut b = pin.to_vec();
    b.resize(8, 0xFF);
    b
}

fn authenticate(card: &mut VirtualCard, key: &ManagementKey) -> u16 {
    let alg = key.algorithm.byte();
    let (resp, sw) = send(card, 0x87, alg, 0x9B, &hexb("7C028000"));
    assert_eq!(sw, 0x9000);
    let outer = tlv::parse_all(&resp).unwrap();
    let inner = tlv::parse_all(tlv::find(&outer, 0x7C).unwrap()).unwrap();
    let witness = key.decrypt_block(tlv::find(&inner, 0x80).unwrap()).unwrap();
    let challenge = vec![0x33; key.algorithm.block_len()];
    let mut body = tlv::encode(0x80, &witness);
    body.extend(tlv::encode(0x81, &challenge));
    let (resp, sw) = send(card, 0x87, alg, 0x9B, &tlv::encode(0x7C, &body));
    if sw == 0x9000 {
        let outer = tlv::parse_all(&resp).unwrap();
        let inner = tlv::parse_all(tlv::find(&outer, 0x7C).unwrap()).unwrap();
        assert_eq!(
            tlv::find(&inner, 0x82).unwrap(),
            key.encrypt_block(&challenge).unwrap()
        );
    }
    sw
}

fn default_key(firmware: [u8; 3]) -> ManagementKey {
    ManagementKey::factory_default(firmware >= [5, 7, 0])
}

fn generate(card: &mut VirtualCard, slot: u8, alg: u8, pin: u8, touch: u8) -> (Vec<u8>, u16) {
    let mut inner = tlv::encode(0x80, &[alg]);
    if pin != 0 {
        inner.extend(tlv::encode(0xAA, &[pin]));
    }
    if touch != 0 {
        inner.extend(tlv::encode(0xAB, &[touch]));
    }
    send_all(card, 0x47, 0, slot, &tlv::encode(0xAC, &inner))
}

fn sign_request(input: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x82, 0x00];
    inner.extend(tlv::encode(0x81, input));
    tlv::encode(0x7C, &inner)
}

fn p256_public(generate_response: &[u8]) -> p256::PublicKey {
    let outer = tlv::parse_all(generate_response).unwrap();
    let inner = tlv::parse_all(tlv::find(&outer, 0x7F49).unwrap()).unwrap();
    p256::PublicKey::from_sec1_bytes(tlv::find(&inner, 0x86).unwrap()).unwrap()
}

#[test]
fn select_answers_piv_management_and_refuses_other_aids() {
    let mut card = new_card([5, 4, 3]);
    let (data, sw) = send(&mut card, 0xA4, 4, 0, &hexb("A000000308"));
    assert_eq!(
        (hex::encode_upper(&data), sw),
        (
            "61114F06000010000100790 74F05A000000308".replace(' ', ""),
            0x9000
        )
    );
    let (data, sw) = send(&mut card, 0xA4, 4, 0, &hexb("A000000527471117"));
    assert_eq!((data, sw), (b"5.4.3".to_vec(), 0x9000));
    for aid in [
        "A0000005272001",
        "A0000006472F0001",
        "D27600012401",
        "A0000005272101",
        "A000000527210701",
    ] {
        assert_eq!(send(&mut card, 0xA4, 4, 0, &hexb(aid)).1, 0x6A82, "{aid}");
    }
    assert_eq!(send(&mut card, 0xA4, 0, 0, &hexb("3F00")).1, 0x6A82);
}

#[test]
fn bad_apdus_get_iso_status_words() {
    let mut card = new_card([5, 4, 3]);
    assert_eq!(send_raw(&mut card, &[0x00, 0xFD]).1, 0x6700);
    assert_eq!(
        send_raw(&mut card, &[0x00, 0x20, 0x00, 0x80, 0x05, 1, 2]).1,
        0x6700
    );
    assert_eq!(send_raw(&mut card, &[0x00, 0x42, 0x00, 0x00]).1, 0x6D00);
    assert_eq!(send_raw(&mut card, &[0x80, 0xFD, 0x00, 0x00]).1, 0x6E00);
    assert_eq!(send_raw(&mut card, &[0x0C, 0xFD, 0x00, 0x00]).1, 0x6E00);
    assert_eq!(send_raw(&mut card, &[0x00, 0xFD, 0x01, 0x00]).1, 0x6A86);
    assert_eq!(
        send_raw(&mut card, &[0x00, 0xC0, 0x00, 0x00, 0x00]).1,
        0x6985
    );
}

#[test]
fn version_and_serial() {
    let mut card = new_card([5, 7, 4]);
    assert_eq!(send(&mut card, 0xFD, 0, 0, &[]), (vec![5, 7, 4], 0x9000));
    assert_eq!(
        send(&mut card, 0xF8, 0, 0, &[]),
        (15_732_500u32.to_be_bytes().to_vec(), 0x9000)
    );
}

#[test]
fn verify_counts_retries_blocks_and_answers_the_probe() {
    let mut card = new_card([5, 4, 3]);
    assert_eq!(send(&mut card, 0x20, 0, 0x80, &[]).1, 0x63C3);
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &pin_block(b"654321")).1,
        0x63C2
    );
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456")).1,
        0x9000
    );
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &[]).1,
        0x9000,
        "verified probe"
    );
    assert_eq!(
        send(&mut card, 0x20, 0xFF, 0x80, &[]).1,
        0x9000,
        "deauthenticate"
    );
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &[]).1,
        0x63C3,
        "counter restored"
    );
    assert_eq!(send(&mut card, 0x20, 0, 0x80, b"1234567").1, 0x6A80);
    assert_eq!(send(&mut card, 0x20, 0, 0x96, &[]).1, 0x6A88);
    assert_eq!(send(&mut card, 0x20, 0x01, 0x80, &[]).1, 0x6A86);
    for expected in [0x63C2, 0x63C1, 0x63C0, 0x6983] {
        assert_eq!(
            send(&mut card, 0x20, 0, 0x80, &pin_block(b"000000")).1,
            expected
        );
    }
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456")).1,
        0x6983
    );
    assert_eq!(send(&mut card, 0x20, 0, 0x80, &[]).1, 0x6983);
}

#[test]
fn change_pin_puk_and_unblock() {
    let mut card = new_card([5, 4, 3]);
    let change = |old: &[u8], new: &[u8]| [pin_block(old), pin_block(new)].concat();
    assert_eq!(
        send(&mut card, 0x24, 0, 0x80, &change(b"000000", b"654321")).1,
        0x63C2
    );
    assert_eq!(
        send(&mut card, 0x24, 0, 0x80, &change(b"123456", b"12345")).1,
        0x6A80,
        "new PIN too short"
    );
    assert_eq!(
        send(&mut card, 0x24, 0, 0x80, &change(b"123456", b"654321")).1,
        0x9000
    );
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &pin_block(b"654321")).1,
        0x9000
    );
    assert_eq!(
        send(&mut card, 0x24, 0, 0x81, &change(b"12345678", b"87654321")).1,
        0x9000
    );
    assert_eq!(
        send(&mut card, 0x24, 0, 0x82, &change(b"12345678", b"87654321")).1,
        0x6A88
    );
    assert_eq!(send(&mut card, 0x24, 0, 0x80, &[0; 15]).1, 0x6A80);
    for _ in 0..3 {
        send(&mut card, 0x20, 0, 0x80, &pin_block(b"000000"));
    }
    assert_eq!(
        send(&mut card, 0x2C, 0, 0x80, &change(b"12345678", b"111111")).1,
        0x63C2,
        "old PUK"
    );
    assert_eq!(
        send(&mut card, 0x2C, 0, 0x80, &change(b"87654321", b"111111")).1,
        0x9000
    );
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &pin_block(b"111111")).1,
        0x9000
    );
    assert_eq!(
        send(&mut card, 0x2C, 0, 0x81, &change(b"87654321", b"111111")).1,
        0x6A88
    );
}

#[test]
fn management_key_authentication_3des_and_aes() {
    for fw in [[5, 4, 3], [5, 7, 4]] {
        let mut card = new_card(fw);
        let key = default_key(fw);
        let expected = if fw >= [5, 7, 0] {
            ManagementAlgorithm::Aes192
        } else {
            ManagementAlgorithm::TripleDes
        };
        assert_eq!(key.algorithm, expected);
        assert_eq!(authenticate(&mut card, &key), 0x9000);
        let wrong = ManagementKey::new(key.algorithm, &[9; 24]).unwrap();
        assert_eq!(authenticate(&mut card, &wrong), 0x6982);
        let other_alg = if fw >= [5, 7, 0] { 0x03 } else { 0x0A };
        assert_eq!(
            send(&mut card, 0x87, other_alg, 0x9B, &hexb("7C028000")).1,
            0x6A86
        );
        let block = key.algorithm.block_len();
        let mut body = tlv::encode(0x80, &vec![0; block]);
        body.extend(tlv::encode(0x81, &vec![0; block]));
        assert_eq!(
            send(
                &mut card,
                0x87,
                key.algorithm.byte(),
                0x9B,
                &tlv::encode(0x7C, &body)
            )
            .1,
            0x6A80,
            "no witness pending"
        );
    }
}

#[test]
fn external_authentication_with_a_card_challenge() {
    let mut card = new_card([5, 4, 3]);
    let key = default_key([5, 4, 3]);
    let (resp, sw) = send(&mut card, 0x87, 0x03, 0x9B, &hexb("7C028100"));
    assert_eq!(sw, 0x9000);
    let challenge = tlv::find(&tlv::parse_all(&resp[2..]).unwrap(), 0x81)
        .unwrap()
        .to_vec();
    let response = tlv::encode(
        0x7C,
        &tlv::encode(0x82, &key.encrypt_block(&challenge).unwrap()),
    );
    assert_eq!(send(&mut card, 0x87, 0x03, 0x9B, &response).1, 0x9000);
    assert_eq!(generate(&mut card, 0x9A, 0x11, 0, 0).1, 0x9000);
}

#[test]
fn set_management_key_to_aes_and_back() {
    let mut card = new_card([5, 4, 3]);
    let mut data = vec![0x0C];
    data.extend(tlv::encode(0x9B, &[7; 32]));
    assert_eq!(send(&mut card, 0xFF, 0xFF, 0xFF, &data).1, 0x6982);
    authenticate(&mut card, &default_key([5, 4, 3]));
    assert_eq!(
        send(&mut card, 0xFF, 0xFF, 0xFF, &[0x0C, 0x9B, 0x10, 1]).1,
        0x6A80
    );
    let mut short = vec![0x0C];
    short.extend(tlv::encode(0x9B, &[7; 24]));
    assert_eq!(
        send(&mut card, 0xFF, 0xFF, 0xFF, &short).1,
        0x6A80,
        "AES-256 key of 24 bytes"
    );
    assert_eq!(send(&mut card, 0xFF, 0xFF, 0xFF, &data).1, 0x9000);
    let new = ManagementKey::new(ManagementAlgorithm::Aes256, &[7; 32]).unwrap();
    let (meta, _) = send(&mut card, 0xF7, 0, 0x9B, &[]);
    assert_eq!(hex::encode(meta), "01010c020200010501 00".replace(' ', ""));
    assert_eq!(authenticate(&mut card, &new), 0x9000);
    assert_eq!(send(&mut card, 0xFF, 0xFF, 0x00, &data).1, 0x6A86);

    let mut old_card = new_card([5, 2, 7]);
    authenticate(&mut old_card, &default_key([5, 2, 7]));
    assert_eq!(
        send(&mut old_card, 0xFF, 0xFF, 0xFF, &data).1,
        0x6A80,
        "AES needs 5.4"
    );
}

#[test]
fn generate_needs_management_auth_and_a_supported_algorithm() {
    let mut card = new_card([5, 4, 3]);
    assert_eq!(generate(&mut card, 0x9A, 0x11, 0, 0).1, 0x6982);
    authenticate(&mut card, &default_key([5, 4, 3]));
    assert_eq!(
        generate(&mut card, 0x9A, 0xE0, 0, 0).1,
        0x6A80,
        "Ed25519 needs 5.7"
    );
    assert_eq!(
        generate(&mut card, 0x9A, 0x16, 0, 0).1,
        0x6A80,
        "RSA 4096 needs 5.7"
    );
    assert_eq!(generate(&mut card, 0x9A, 0x42, 0, 0).1, 0x6A80);
    assert_eq!(
        generate(&mut card, 0x9A, 0x11, 7, 0).1,
        0x6A80,
        "bad PIN policy"
    );
    assert_eq!(generate(&mut card, 0x9B, 0x11, 0, 0).1, 0x6A86);
    assert_eq!(
        send(&mut card, 0x47, 0, 0x9A, &hexb("8001 11")).1,
        0x6A80,
        "no AC template"
    );
    let (resp, sw) = generate(&mut card, 0x9A, 0x11, 0, 0);
    assert_eq!(sw, 0x9000);
    assert_eq!(&resp[..5], &[0x7F, 0x49, 0x43, 0x86, 0x41]);
    p256_public(&resp);
}

#[test]
fn rsa_2048_generate_and_raw_sign_over_get_response() {
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    let (first, sw) = send(&mut card, 0x47, 0, 0x9A, &hexb("AC03800107"));
    assert_eq!(
        (first.len(), sw >> 8),
        (256, 0x61),
        "more than 256 bytes waits for GET RESPONSE"
    );
    let (rest, sw) = send_raw(&mut card, &[0, 0xC0, 0, 0, (sw & 0xFF) as u8]);
    assert_eq!(sw, 0x9000);
    let resp = [first, rest].concat();
    let outer = tlv::parse_all(&resp).unwrap();
    let inner = tlv::parse_all(tlv::find(&outer, 0x7F49).unwrap()).unwrap();
    let n = tlv::find(&inner, 0x81).unwrap();
    let e = tlv::find(&inner, 0x82).unwrap();
    assert_eq!((n.len(), e), (256, &[1u8, 0, 1][..]));
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456"));
    let mut padded = vec![0x00, 0x01];
    padded.extend(vec![0xFF; 256 - 3 - 32]);
    padded.push(0);
    padded.extend([0xAB; 32]);
    let (sig, sw) = send_all(&mut card, 0x87, 0x07, 0x9A, &sign_request(&padded));
    assert_eq!(sw, 0x9000);
    let sig = tlv::find(&tlv::parse_all(&sig[4..]).unwrap(), 0x82)
        .unwrap()
        .to_vec();
    // raw RSA: sig^e mod n is the padded input again
    let public = rsa::RsaPublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(n),
        rsa::BoxedUint::from_be_slice_vartime(e),
    )
    .unwrap();
    let c = rsa::BoxedUint::from_be_slice(&sig, 2048).unwrap();
    let m = rsa::hazmat::rsa_encrypt(&public, &c).unwrap();
    assert_eq!(&m.to_be_bytes()[..], &padded[..]);
    assert_eq!(
        send(&mut card, 0x87, 0x07, 0x9A, &sign_request(&[1; 255])).1,
        0x6A80,
        "input shorter than the modulus"
    );
}

#[test]
fn ecdsa_signing_follows_pin_policy_once_and_always() {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    let once = p256_public(&generate(&mut card, 0x9A, 0x11, 0, 0).0);
    let always = p256_public(&generate(&mut card, 0x9C, 0x11, 0, 0).0);
    let hash = [0x11u8; 32];
    assert_eq!(
        send(&mut card, 0x87, 0x11, 0x9A, &sign_request(&hash)).1,
        0x6982
    );
    assert_eq!(
        send(&mut card, 0x87, 0x14, 0x9A, &sign_request(&hash)).1,
        0x6A86,
        "wrong algorithm"
    );
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456"));
    for (slot, public) in [(0x9A, once), (0x9C, always)] {
        let (resp, sw) = send(&mut card, 0x87, 0x11, slot, &sign_request(&hash));
        assert_eq!(sw, 0x9000);
        let der = tlv::find(&tlv::parse_all(&resp[2..]).unwrap(), 0x82)
            .unwrap()
            .to_vec();
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        p256::ecdsa::VerifyingKey::from(public)
            .verify_prehash(&hash, &sig)
            .unwrap();
    }
    assert_eq!(
        send(&mut card, 0x87, 0x11, 0x9C, &sign_request(&hash)).1,
        0x6982,
        "9C is PIN always"
    );
    assert_eq!(
        send(&mut card, 0x87, 0x11, 0x9A, &sign_request(&hash)).1,
        0x9000,
        "9A is PIN once"
    );
    assert_eq!(
        send(&mut card, 0x87, 0x11, 0x9D, &sign_request(&hash)).1,
        0x6A80,
        "empty slot"
    );
    assert_eq!(
        send(
            &mut card,
            0x87,
            0x11,
            0x9A,
            &tlv::encode(0x7C, &hexb("8100"))
        )
        .1,
        0x6A80
    );
}

#[test]
fn ecdh_in_key_management_slot() {
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    let card_public = p256_public(&generate(&mut card, 0x9D, 0x11, 1, 0).0);
    let peer = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
    use p256::elliptic_curve::sec1::ToSec1Point;
    let mut inner = vec![0x82, 0x00];
    inner.extend(tlv::encode(
        0x85,
        peer.public_key().to_sec1_point(false).as_bytes(),
    ));
    let (resp, sw) = send(&mut card, 0x87, 0x11, 0x9D, &tlv::encode(0x7C, &inner));
    assert_eq!(sw, 0x9000);
    let shared = (card_public.to_projective() * *peer.to_nonzero_scalar()).to_affine();
    let shared = p256::PublicKey::from_affine(shared)
        .unwrap()
        .to_sec1_point(false);
    assert_eq!(&resp[4..], &shared.as_bytes()[1..33]);
}

#[test]
fn touch_always_is_refused_when_the_fault_says_so_and_cached_lasts() {
    let faults = FaultPlan {
        refuse_touch: true,
        ..FaultPlan::default()
    };
    let mut card = new_card_with([5, 4, 3], faults);
    authenticate(&mut card, &default_key([5, 4, 3]));
    generate(&mut card, 0x9E, 0x11, 0, 2);
    assert_eq!(
        send(&mut card, 0x87, 0x11, 0x9E, &sign_request(&[1; 32])).1,
        0x6982
    );
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    generate(&mut card, 0x9E, 0x11, 0, 3);
    assert_eq!(
        send(&mut card, 0x87, 0x11, 0x9E, &sign_request(&[1; 32])).1,
        0x9000
    );
    let touched = card.last_touch;
    assert!(touched.is_some());
    assert_eq!(
        send(&mut card, 0x87, 0x11, 0x9E, &sign_request(&[1; 32])).1,
        0x9000
    );
    assert_eq!(
        card.last_touch, touched,
        "cached touch: no second touch within 15 s"
    );
}

#[test]
fn metadata_for_pin_puk_management_key_and_slots() {
    let mut card = new_card([5, 4, 3]);
    assert_eq!(
        hex::encode(send(&mut card, 0xF7, 0, 0x80, &[]).0),
        "0101ff050101060203 03".replace(' ', "")
    );
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"000000"));
    assert_eq!(
        hex::encode(send(&mut card, 0xF7, 0, 0x80, &[]).0),
        "0101ff050101060203 02".replace(' ', "")
    );
    assert_eq!(
        hex::encode(send(&mut card, 0xF7, 0, 0x9B, &[]).0),
        "010103020200010501 01".replace(' ', "")
    );
    assert_eq!(send(&mut card, 0xF7, 0, 0x9A, &[]).1, 0x6A88);
    assert_eq!(send(&mut card, 0xF7, 0, 0x96, &[]).1, 0x6A88);
    authenticate(&mut card, &default_key([5, 4, 3]));
    let (generated, _) = generate(&mut card, 0x9A, 0x11, 3, 3);
    let (meta, sw) = send(&mut card, 0xF7, 0, 0x9A, &[]);
    assert_eq!(sw, 0x9000);
    let tlvs = tlv::parse_all(&meta).unwrap();
    assert_eq!(tlv::find(&tlvs, 0x01), Some(&[0x11u8][..]));
    assert_eq!(tlv::find(&tlvs, 0x02), Some(&[3u8, 3][..]));
    assert_eq!(tlv::find(&tlvs, 0x03), Some(&[1u8][..]));
    assert_eq!(tlv::find(&tlvs, 0x04).unwrap(), &generated[3..]);
    let mut old = new_card([5, 2, 7]);
    assert_eq!(send(&mut old, 0xF7, 0, 0x80, &[]).1, 0x6D00);
}

#[test]
fn put_and_get_data_objects() {
    let mut card = new_card([5, 4, 3]);
    let chuid = hexb("5C035FC102 530A 3008 0102030405060708");
    assert_eq!(send(&mut card, 0xDB, 0x3F, 0xFF, &chuid).1, 0x6982);
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FC102")).1,
        0x6A82
    );
    authenticate(&mut card, &default_key([5, 4, 3]));
    assert_eq!(send(&mut card, 0xDB, 0x3F, 0xFF, &chuid).1, 0x9000);
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FC102")),
        (hexb("530A 3008 0102030405060708"), 0x9000)
    );
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C017E")).0[..2],
        [0x7E, 0x12]
    );
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFE, &hexb("5C035FC102")).1,
        0x6A86
    );
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5D035FC102")).1,
        0x6A80
    );
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C04 5FC10200")).1,
        0x6A80
    );
    // printed information needs the PIN
    assert_eq!(
        send(&mut card, 0xDB, 0x3F, 0xFF, &hexb("5C035FC109 5302 0102")).1,
        0x9000
    );
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FC109")).1,
        0x6982
    );
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456"));
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FC109")).1,
        0x9000
    );
    // oversized, unknown tag, discovery, delete
    let mut big = hexb("5C035FC105 5382 0BF8");
    big.extend(vec![0; 0x0BF8]);
    assert_eq!(send(&mut card, 0xDB, 0x3F, 0xFF, &big).1, 0x6A84);
    assert_eq!(
        send(&mut card, 0xDB, 0x3F, 0xFF, &hexb("5C03123456 5300")).1,
        0x6A80
    );
    assert_eq!(send(&mut card, 0xDB, 0x3F, 0xFF, &hexb("7E00")).1, 0x6A81);
    assert_eq!(
        send(&mut card, 0xDB, 0x3F, 0xFF, &hexb("5C035FC102 5300")).1,
        0x9000
    );
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FC102")).1,
        0x6A82
    );
    assert_eq!(
        send(&mut card, 0xDB, 0x3F, 0xFF, &hexb("5C035FC102 5305 01")).1,
        0x6A80,
        "cut-short 53"
    );
}

#[test]
fn command_chaining_builds_one_object_and_a_cut_chain_is_refused() {
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    let mut data = hexb("5C035FC105 5382 0400");
    data.extend((0..0x400).map(|i| i as u8));
    let chunks: Vec<&[u8]> = data.chunks(255).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let cla = if i + 1 < chunks.len() { 0x10 } else { 0x00 };
        assert_eq!(
            send_raw(&mut card, &apdu(cla, 0xDB, 0x3F, 0xFF, chunk)).1,
            0x9000
        );
    }
    let (read, sw) = send_all(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FC105"));
    assert_eq!(sw, 0x9000);
    assert_eq!(&read[4..], &data[9..]);
    // a chain broken by another instruction
    assert_eq!(
        send_raw(&mut card, &apdu(0x10, 0xDB, 0x3F, 0xFF, &data[..100])).1,
        0x9000
    );
    assert_eq!(send(&mut card, 0xFD, 0, 0, &[]).1, 0x6883);
    assert_eq!(
        send(&mut card, 0xFD, 0, 0, &[]).1,
        0x9000,
        "the broken chain is forgotten"
    );
    // a chain that ends with a truncated object
    assert_eq!(
        send_raw(&mut card, &apdu(0x10, 0xDB, 0x3F, 0xFF, &data[..100])).1,
        0x9000
    );
    assert_eq!(
        send_raw(&mut card, &apdu(0x00, 0xDB, 0x3F, 0xFF, &data[100..200])).1,
        0x6A80
    );
    // a chain longer than any command
    for _ in 0..100 {
        let sw = send_raw(&mut card, &apdu(0x10, 0xDB, 0x3F, 0xFF, &[0; 255])).1;
        if sw != 0x9000 {
            assert_eq!(sw, 0x6A84);
            return;
        }
    }
    panic!("an endless chain was accepted");
}

#[test]
fn extended_apdu_gets_the_whole_response_at_once() {
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    let mut data = hexb("5C035FC105 5382 0400");
    data.extend(vec![0x5A; 0x400]);
    assert_eq!(
        send(&mut card, 0xDB, 0x3F, 0xFF, &data).1,
        0x9000,
        "extended Lc"
    );
    let mut get = vec![0, 0xCB, 0x3F, 0xFF, 0, 0, 5];
    get.extend(hexb("5C035FC105"));
    get.extend([0, 0]);
    let (read, sw) = send_raw(&mut card, &get);
    assert_eq!((read.len(), sw), (0x404, 0x9000));
}

#[test]
fn attestation_certificate_carries_yubico_extensions_and_verifies() {
    use der::{Decode, Encode};
    use rsa::signature::Verifier;
    let mut card = new_card([5, 4, 3]);
    assert_eq!(send(&mut card, 0xF9, 0x9A, 0, &[]).1, 0x6A88, "empty slot");
    assert_eq!(send(&mut card, 0xF9, 0x9B, 0, &[]).1, 0x6A86);
    authenticate(&mut card, &default_key([5, 4, 3]));
    let public = p256_public(&generate(&mut card, 0x9A, 0x11, 2, 1).0);
    let (cert_der, sw) = send_all(&mut card, 0xF9, 0x9A, 0, &[]);
    assert_eq!(sw, 0x9000);
    let cert = x509_cert::Certificate::from_der(&cert_der).unwrap();
    let tbs = cert.tbs_certificate();
    assert_eq!(tbs.subject().to_string(), "CN=YubiKey PIV Attestation 9a");
    assert_eq!(tbs.serial_number().as_bytes()[0], 0x01);
    assert_eq!(tbs.serial_number().as_bytes().len(), 16);
    let exts: Vec<(String, bool, Vec<u8>)> = tbs
        .extensions()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e.extn_id.to_string(),
                e.critical,
                e.extn_value.as_bytes().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        exts,
        vec![
            ("1.3.6.1.4.1.41482.3.3".into(), false, vec![5, 4, 3]),
            ("1.3.6.1.4.1.41482.3.7".into(), false, hexb("020400F00F14")),
            ("1.3.6.1.4.1.41482.3.8".into(), false, vec![2, 1]),
            ("1.3.6.1.4.1.41482.3.9".into(), false, vec![4]),
        ]
    );
    use p256::pkcs8::EncodePublicKey;
    assert_eq!(
        tbs.subject_public_key_info().to_der().unwrap(),
        public.to_public_key_der().unwrap().as_bytes()
    );
    // signed by the key of the device certificate in 5FFF01, which names it as issuer
    let (obj, _) = send_all(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FFF01"));
    let inner = tlv::parse_all(tlv::parse_one(&obj).unwrap().0.value).unwrap();
    let device = x509_cert::Certificate::from_der(tlv::find(&inner, 0x70).unwrap()).unwrap();
    assert_eq!(tbs.issuer(), device.tbs_certificate().subject());
    assert_eq!(tbs.validity(), device.tbs_certificate().validity());
    let spki = device
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap();
    use rsa::pkcs8::DecodePublicKey;
    let device_key = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
    let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(device_key);
    let sig = rsa::pkcs1v15::Signature::try_from(cert.signature().raw_bytes()).unwrap();
    verifier.verify(&tbs.to_der().unwrap(), &sig).unwrap();
}

#[test]
fn attestation_chain_verifies_with_openssl_against_the_exported_root() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let mut card = new_card([5, 7, 4]);
    authenticate(&mut card, &default_key([5, 7, 4]));
    generate(&mut card, 0x82, 0x14, 0, 0);
    let (slot, _) = send_all(&mut card, 0xF9, 0x82, 0, &[]);
    let device = card.state().device_certificate().unwrap();
    let pem = super::attestation::certificate_pem;
    std::fs::write(
        dir.path().join("root.pem"),
        pem(&card.state().attestation_root_der),
    )
    .unwrap();
    std::fs::write(dir.path().join("f9.pem"), pem(&device)).unwrap();
    std::fs::write(dir.path().join("slot.pem"), pem(&slot)).unwrap();
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "f9.pem",
            "slot.pem",
        ])
        .output()
        .expect("openssl is missing: run scripts/install-deps.sh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "slot.pem: OK",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn imported_keys_are_not_attested_and_report_their_origin() {
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    let mut data = tlv::encode(0x06, &[0x42; 32]);
    data.extend(tlv::encode(0xAA, &[1]));
    assert_eq!(send(&mut card, 0xFE, 0x11, 0x9E, &data).1, 0x9000);
    let meta = send(&mut card, 0xF7, 0, 0x9E, &[]).0;
    let tlvs = tlv::parse_all(&meta).unwrap();
    assert_eq!(tlv::find(&tlvs, 0x03), Some(&[2u8][..]));
    assert_eq!(send(&mut card, 0xF9, 0x9E, 0, &[]).1, 0x6A80);
    assert_eq!(
        send(&mut card, 0xFE, 0x11, 0x9E, &tlv::encode(0x06, &[0x42; 31])).1,
        0x6A80
    );
    assert_eq!(send(&mut card, 0xFE, 0x42, 0x9E, &data).1, 0x6A86);
    // signing works with the imported key, PIN policy never
    assert_eq!(
        send(&mut card, 0x87, 0x11, 0x9E, &sign_request(&[1; 32])).1,
        0x9000
    );
}

#[test]
fn reset_only_when_pin_and_puk_are_blocked_and_keeps_attestation() {
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    generate(&mut card, 0x9A, 0x11, 0, 0);
    assert_eq!(send(&mut card, 0xFB, 0, 0, &[]).1, 0x6985);
    let device_before = card.state().device_certificate().unwrap();
    for _ in 0..3 {
        send(&mut card, 0x20, 0, 0x80, &pin_block(b"000000"));
    }
    assert_eq!(
        send(&mut card, 0xFB, 0, 0, &[]).1,
        0x6985,
        "PUK still usable"
    );
    let bad = [pin_block(b"00000000"), pin_block(b"000000")].concat();
    for _ in 0..3 {
        send(&mut card, 0x2C, 0, 0x80, &bad);
    }
    assert_eq!(send(&mut card, 0xFB, 0, 0, &[]).1, 0x9000);
    assert_eq!(send(&mut card, 0xF7, 0, 0x9A, &[]).1, 0x6A88, "keys gone");
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456")).1,
        0x9000
    );
    assert_eq!(card.state().device_certificate().unwrap(), device_before);
    assert_eq!(authenticate(&mut card, &default_key([5, 4, 3])), 0x9000);
}

#[test]
fn set_pin_retries_needs_management_key_and_pin() {
    let mut card = new_card([5, 4, 3]);
    assert_eq!(send(&mut card, 0xFA, 5, 6, &[]).1, 0x6982);
    authenticate(&mut card, &default_key([5, 4, 3]));
    assert_eq!(send(&mut card, 0xFA, 5, 6, &[]).1, 0x6982);
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456"));
    assert_eq!(send(&mut card, 0xFA, 0, 6, &[]).1, 0x6A86);
    assert_eq!(send(&mut card, 0xFA, 5, 6, &[]).1, 0x9000);
    assert_eq!(send(&mut card, 0x20, 0, 0x80, &[]).1, 0x63C5);
    assert_eq!(
        hex::encode(send(&mut card, 0xF7, 0, 0x81, &[]).0),
        "0101ff050101060206 06".replace(' ', "")
    );
}

#[test]
fn management_application_read_config() {
    let mut card = new_card([5, 7, 4]);
    send(&mut card, 0xA4, 4, 0, &hexb("A000000527471117"));
    let (data, sw) = send(&mut card, 0x1D, 0, 0, &[]);
    assert_eq!(sw, 0x9000);
    assert_eq!(usize::from(data[0]), data.len() - 1);
    let tlvs = tlv::parse_all(&data[1..]).unwrap();
    assert_eq!(
        tlv::find(&tlvs, 0x02),
        Some(&15_732_500u32.to_be_bytes()[..])
    );
    assert_eq!(tlv::find(&tlvs, 0x05), Some(&[5u8, 7, 4][..]));
    assert_eq!(tlv::find(&tlvs, 0x04), Some(&[4u8][..]));
    assert_eq!(
        send(&mut card, 0xFD, 0, 0, &[]).1,
        0x6D00,
        "PIV instructions need PIV selected"
    );
    send(&mut card, 0xA4, 4, 0, &hexb("A000000308"));
    assert_eq!(send(&mut card, 0xFD, 0, 0, &[]).1, 0x9000);
}

#[test]
fn state_file_round_trips_keys_objects_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    let root = TestRoot::generate().unwrap();
    let state = CardState::factory(facts([5, 7, 4]), &root).unwrap();
    state.save(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let mut card = VirtualCard::new(
        CardState::load(&path).unwrap(),
        Some(path.clone()),
        FaultPlan::default(),
    );
    authenticate(&mut card, &default_key([5, 7, 4]));
    let (generated, _) = generate(&mut card, 0x9A, 0x11, 0, 0);
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"000000"));
    send(&mut card, 0xDB, 0x3F, 0xFF, &hexb("5C035FC102 5302 0102"));
    let mut data = vec![0x08];
    data.extend(tlv::encode(0x9B, &[5; 16]));
    send(&mut card, 0xFF, 0xFF, 0xFE, &data);
    drop(card);

    let mut card = VirtualCard::new(
        CardState::load(&path).unwrap(),
        Some(path),
        FaultPlan::default(),
    );
    assert_eq!(send(&mut card, 0x20, 0, 0x80, &[]).1, 0x63C2);
    assert_eq!(
        send(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FC102")).0,
        hexb("5302 0102")
    );
    let meta = send(&mut card, 0xF7, 0, 0x9A, &[]).0;
    assert_eq!(
        tlv::find(&tlv::parse_all(&meta).unwrap(), 0x04).unwrap(),
        &generated[3..]
    );
    assert_eq!(
        hex::encode(send(&mut card, 0xF7, 0, 0x9B, &[]).0),
        "010108020200020501 00".replace(' ', "")
    );
    let key = ManagementKey::new(ManagementAlgorithm::Aes128, &[5; 16]).unwrap();
    assert_eq!(authenticate(&mut card, &key), 0x9000);
    assert!(!key.is_default_value() && DEFAULT_MANAGEMENT_KEY.len() == 24);
}

#[test]
fn corrupt_state_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.json");
    std::fs::write(&path, "{\"format\": 1}").unwrap();
    let err = CardState::load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "state file {} is not a tessera-vpiv state: missing field",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn faults_pull_the_card_or_force_a_status() {
    let mut card = new_card_with(
        [5, 4, 3],
        FaultPlan {
            disconnect_after: Some(2),
            ..FaultPlan::default()
        },
    );
    assert_eq!(send(&mut card, 0xFD, 0, 0, &[]).1, 0x9000);
    assert_eq!(send(&mut card, 0xFD, 0, 0, &[]).1, 0x9000);
    assert_eq!(card.process(&[0, 0xFD, 0, 0]), CardReply::Disconnect);

    let faults = FaultPlan {
        disconnect_at_ins: Some(0x87),
        ..FaultPlan::default()
    };
    let mut card = new_card_with([5, 4, 3], faults);
    assert_eq!(send(&mut card, 0xFD, 0, 0, &[]).1, 0x9000);
    assert_eq!(
        card.process(&hexb("0087039B047C028000")),
        CardReply::Disconnect
    );

    // The second occurrence: the first GENERAL AUTHENTICATE is answered, the second pulls.
    let faults = FaultPlan {
        disconnect_at_ins: Some(0x87),
        disconnect_at_ins_occurrence: 2,
        ..FaultPlan::default()
    };
    let mut card = new_card_with([5, 4, 3], faults);
    assert!(matches!(
        card.process(&hexb("0087039B047C028000")),
        CardReply::Response(_)
    ));
    assert_eq!(
        card.process(&hexb("0087039B047C028000")),
        CardReply::Disconnect
    );

    let mut status_by_ins = std::collections::BTreeMap::new();
    status_by_ins.insert(0x47, 0x6A80);
    let mut card = new_card_with(
        [5, 4, 3],
        FaultPlan {
            status_by_ins,
            ..FaultPlan::default()
        },
    );
    authenticate(&mut card, &default_key([5, 4, 3]));
    assert_eq!(generate(&mut card, 0x9A, 0x11, 0, 0).1, 0x6A80);
    assert_eq!(
        send(&mut card, 0xF7, 0, 0x9A, &[]).1,
        0x6A88,
        "nothing was generated"
    );
}

#[test]
fn random_apdus_never_panic() {
    // deterministic xorshift so a failure reproduces
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut card = new_card([5, 7, 4]);
    authenticate(&mut card, &default_key([5, 7, 4]));
    generate(&mut card, 0x9A, 0x11, 1, 1);
    const INS: [u8; 20] = [
        0xA4, 0xCB, 0xDB, 0x20, 0x24, 0x2C, 0x87, 0x47, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFD, 0xFE,
        0xFF, 0xC0, 0x1D, 0x00, 0x42,
    ];
    for _ in 0..20_000 {
        let r = next();
        let len = (r % 64) as usize;
        let mut raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if raw.len() >= 4 && r & 0x100 != 0 {
            raw[0] = if r & 0x200 != 0 { 0x10 } else { 0x00 };
            raw[1] = INS[(r >> 16) as usize % INS.len()];
            if r & 0x400 != 0 && raw.len() > 5 {
                raw[4] = (raw.len() - 5) as u8;
            }
        }
        let _ = card.process(&raw);
    }
    assert_eq!(
        send(&mut card, 0xA4, 4, 0, &hexb("A000000308")).1,
        0x9000,
        "the card still answers"
    );
}

#[test]
fn status_word_helper() {
    assert_eq!(StatusWord::verify_failed(20), StatusWord(0x63CF));
}

#[test]
fn any_select_resets_the_security_status_as_on_a_yubikey() {
    let mut card = new_card([5, 4, 3]);
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456"));
    assert_eq!(send(&mut card, 0x20, 0, 0x80, &[]).1, 0x9000);
    assert_eq!(send(&mut card, 0xA4, 4, 0, &hexb("A000000308")).1, 0x9000);
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &[]).1,
        0x63C3,
        "PIV selected again"
    );
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456"));
    authenticate(&mut card, &default_key([5, 4, 3]));
    assert_eq!(send(&mut card, 0xA4, 4, 0, &hexb("D27600012401")).1, 0x6A82);
    assert_eq!(
        send(&mut card, 0x20, 0, 0x80, &[]).1,
        0x63C3,
        "unknown AID selected"
    );
    assert_eq!(
        generate(&mut card, 0x9A, 0x11, 0, 0).1,
        0x6982,
        "management key forgotten too"
    );
    assert_eq!(
        send(&mut card, 0xFD, 0, 0, &[]).1,
        0x9000,
        "PIV stays selected"
    );
}

#[test]
fn move_and_delete_keys_on_5_7() {
    let mut card = new_card([5, 7, 4]);
    assert_eq!(send(&mut card, 0xF6, 0x82, 0x9A, &[]).1, 0x6982);
    authenticate(&mut card, &default_key([5, 7, 4]));
    assert_eq!(
        send(&mut card, 0xF6, 0x82, 0x9A, &[]).1,
        0x6A88,
        "nothing to move"
    );
    let (generated, _) = generate(&mut card, 0x9A, 0x11, 0, 0);
    assert_eq!(send(&mut card, 0xF6, 0x82, 0x9A, &[]).1, 0x9000);
    assert_eq!(send(&mut card, 0xF7, 0, 0x9A, &[]).1, 0x6A88);
    let meta = send(&mut card, 0xF7, 0, 0x82, &[]).0;
    assert_eq!(
        tlv::find(&tlv::parse_all(&meta).unwrap(), 0x04).unwrap(),
        &generated[3..]
    );
    assert_eq!(send(&mut card, 0xF6, 0xFF, 0x82, &[]).1, 0x9000);
    assert_eq!(send(&mut card, 0xF7, 0, 0x82, &[]).1, 0x6A88);
    assert_eq!(send(&mut card, 0xF6, 0x9B, 0x82, &[]).1, 0x6A86);
    let mut old = new_card([5, 4, 3]);
    assert_eq!(send(&mut old, 0xF6, 0x82, 0x9A, &[]).1, 0x6D00);
}

#[test]
fn x25519_key_agreement_on_5_7() {
    let mut card = new_card([5, 7, 4]);
    authenticate(&mut card, &default_key([5, 7, 4]));
    let (generated, sw) = generate(&mut card, 0x9D, 0xE1, 1, 0);
    assert_eq!(
        (sw, &generated[..5]),
        (0x9000, &[0x7F, 0x49, 0x22, 0x86, 0x20][..])
    );
    let card_public: [u8; 32] = generated[5..].try_into().unwrap();
    let peer_secret = [0x24u8; 32];
    let peer_public = x25519_dalek::x25519(peer_secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    let mut inner = vec![0x82, 0x00];
    inner.extend(tlv::encode(0x85, &peer_public));
    let (resp, sw) = send(&mut card, 0x87, 0xE1, 0x9D, &tlv::encode(0x7C, &inner));
    assert_eq!(sw, 0x9000);
    assert_eq!(
        &resp[4..],
        &x25519_dalek::x25519(peer_secret, card_public)[..]
    );
    assert_eq!(
        send(&mut card, 0x87, 0xE1, 0x9D, &sign_request(&[1; 32])).1,
        0x6A80,
        "X25519 cannot sign"
    );
    assert_eq!(
        send_all(&mut card, 0xF9, 0x9D, 0, &[]).1,
        0x9000,
        "X25519 keys are attested"
    );
    let mut old = new_card([5, 4, 3]);
    authenticate(&mut old, &default_key([5, 4, 3]));
    assert_eq!(generate(&mut old, 0x9D, 0xE1, 0, 0).1, 0x6A80);
}

#[test]
fn attestation_under_a_given_p256_root_verifies_with_openssl() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .output()
            .expect("openssl is missing: run scripts/install-deps.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "root.key",
    ]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "root.key",
        "-subj",
        "/CN=Given Root",
        "-days",
        "30",
        "-out",
        "root.pem",
    ]);
    let root = TestRoot::from_files(
        &std::fs::read(dir.path().join("root.pem")).unwrap(),
        &std::fs::read_to_string(dir.path().join("root.key")).unwrap(),
    )
    .unwrap();
    let state = CardState::factory(facts([5, 4, 3]), &root).unwrap();
    let mut card = VirtualCard::new(state, None, FaultPlan::default());
    authenticate(&mut card, &default_key([5, 4, 3]));
    generate(&mut card, 0x9C, 0x14, 0, 0);
    let (slot, _) = send_all(&mut card, 0xF9, 0x9C, 0, &[]);
    let pem = super::attestation::certificate_pem;
    std::fs::write(
        dir.path().join("f9.pem"),
        pem(&card.state().device_certificate().unwrap()),
    )
    .unwrap();
    std::fs::write(dir.path().join("slot.pem"), pem(&slot)).unwrap();
    assert_eq!(
        run(&[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "f9.pem",
            "slot.pem"
        ]),
        "slot.pem: OK"
    );
    assert!(
        run(&["x509", "-in", "f9.pem", "-noout", "-text"])
            .contains("Signature Algorithm: ecdsa-with-SHA256")
    );
}

#[test]
fn the_apdu_log_never_shows_pins_or_keys() {
    use super::card::loggable_command;
    let verify = apdu(0, 0x20, 0, 0x80, &pin_block(b"123456"));
    assert_eq!(loggable_command(&verify), "0020008008 [redacted 8 bytes]");
    let mut set_key = vec![0x03];
    set_key.extend(tlv::encode(0x9B, &DEFAULT_MANAGEMENT_KEY));
    assert_eq!(
        loggable_command(&apdu(0, 0xFF, 0xFF, 0xFF, &set_key)),
        "00FFFFFF1B [redacted 27 bytes]"
    );
    for ins in [0x24, 0x2C, 0xFE] {
        assert!(
            loggable_command(&apdu(0x10, ins, 0, 0x80, &[0x31; 16]))
                .ends_with("[redacted 16 bytes]")
        );
    }
    assert_eq!(
        loggable_command(&hexb("00CB3FFF055C035FC102")),
        "00CB3FFF055C035FC102"
    );
}

#[test]
fn a_short_le_gets_that_many_bytes_and_61xx_for_the_rest() {
    // OpenSC reads objects with Le = 8 first to learn their length
    let mut card = new_card([5, 4, 3]);
    let mut get = hexb("00CB3FFF 05 5C035FFF01");
    get.push(0x08);
    let (first, sw) = send_raw(&mut card, &get);
    assert_eq!(first.len(), 8);
    assert_eq!(sw >> 8, 0x61);
    let (_, whole_sw) = send_all(&mut card, 0xCB, 0x3F, 0xFF, &hexb("5C035FFF01"));
    assert_eq!(whole_sw, 0x9000);
    let (first, sw) = send_raw(&mut card, &get);
    let (rest, sw2) = send_raw(&mut card, &[0, 0xC0, 0, 0, 0]);
    assert_eq!(
        (sw >> 8, rest.len(), sw2 >> 8),
        (0x61, 256, 0x61),
        "GET RESPONSE with Le 00 gives 256"
    );
    assert_eq!(first[0], 0x53);
    assert_eq!(send_raw(&mut card, &[0, 0xC0, 1, 0, 0]).1, 0x6A86);
    assert_eq!(
        send(&mut card, 0xFD, 0, 0, &[]).1,
        0x9000,
        "another command drops the rest"
    );
    assert_eq!(send_raw(&mut card, &[0, 0xC0, 0, 0, 0]).1, 0x6985);
}

#[test]
fn rsa_import_from_primes_signs_like_the_original_key() {
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    let original = rsa::RsaPrivateKey::new(&mut rand::rng(), 1024).unwrap();
    let primes = original.primes();
    let mut data = tlv::encode(0x01, &primes[0].to_be_bytes_trimmed_vartime());
    data.extend(tlv::encode(0x02, &primes[1].to_be_bytes_trimmed_vartime()));
    let mut card = new_card([5, 4, 3]);
    authenticate(&mut card, &default_key([5, 4, 3]));
    assert_eq!(
        send(&mut card, 0xFE, 0x07, 0x9A, &data).1,
        0x6A80,
        "1024-bit primes for RSA 2048"
    );
    assert_eq!(send(&mut card, 0xFE, 0x06, 0x9A, &data).1, 0x9000);
    let meta = send(&mut card, 0xF7, 0, 0x9A, &[]).0;
    let tlvs = tlv::parse_all(&meta).unwrap();
    let public = tlv::parse_all(tlv::find(&tlvs, 0x04).unwrap()).unwrap();
    assert_eq!(
        tlv::find(&public, 0x81).unwrap(),
        &original.n().as_ref().to_be_bytes_trimmed_vartime()[..]
    );
    send(&mut card, 0x20, 0, 0x80, &pin_block(b"123456"));
    let block = [0x01u8; 128];
    let (resp, sw) = send_all(&mut card, 0x87, 0x06, 0x9A, &sign_request(&block));
    assert_eq!(sw, 0x9000);
    let sig = tlv::find(&tlv::parse_all(&resp[3..]).unwrap(), 0x82)
        .unwrap()
        .to_vec();
    let c = rsa::BoxedUint::from_be_slice(&block, original.n().as_ref().bits_precision()).unwrap();
    let expected =
        rsa::hazmat::rsa_decrypt_and_check(&original, None::<&mut rand::rngs::ThreadRng>, &c)
            .unwrap();
    assert_eq!(sig, &expected.to_be_bytes()[..]);
}
