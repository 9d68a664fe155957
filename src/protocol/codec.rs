//! The protobuf codec of the generated services and clients: tonic-prost's, except that a
//! request that does not decode (random bytes, invalid UTF-8 in a string field) is the caller's
//! mistake and answers `INVALID_ARGUMENT` with reason `MESSAGE_UNDECODABLE`, where tonic-prost
//! answers `INTERNAL`. build.rs names this codec for every service and client of
//! `proto/tessera/v1` (a client meets it only for an answer that does not decode).
use std::collections::HashMap;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// [`tonic_prost::ProstCodec`] with decode errors mapped to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U>(tonic_prost::ProstCodec<T, U>);

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self(tonic_prost::ProstCodec::default())
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(self.0.decoder())
    }
}

/// [`tonic_prost::ProstDecoder`] with decode errors mapped to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProstDecoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|e| {
            if e.code() != Code::Internal {
                return e;
            }
            let details = ErrorDetails::with_error_info(
                "MESSAGE_UNDECODABLE",
                super::ERROR_DOMAIN,
                HashMap::<String, String>::new(),
            );
            Status::with_error_details(
                Code::InvalidArgument,
                format!(
                    "the message is not a valid protobuf message of its type: {}",
                    e.message()
                ),
                details,
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
