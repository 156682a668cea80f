//! A tonic codec that decodes `StreamAccessLogsMessage` into the zero-copy subset types.
//!
//! The gRPC frame arrives in a `BytesMut`; `copy_to_bytes` splits it off without copying, and
//! prost then slices every `bytes` field (and every encoded entry) out of that one buffer.

use bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::wire::StreamAccessLogsMessage;

/// `envoy.service.accesslog.v3.StreamAccessLogsResponse`: an empty message.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamAccessLogsResponse;

#[derive(Debug, Default, Clone, Copy)]
pub struct AlsCodec;

impl Codec for AlsCodec {
    type Encode = StreamAccessLogsResponse;
    type Decode = StreamAccessLogsMessage;
    type Encoder = EmptyEncoder;
    type Decoder = SubsetDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        EmptyEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        SubsetDecoder
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct EmptyEncoder;

impl Encoder for EmptyEncoder {
    type Item = StreamAccessLogsResponse;
    type Error = Status;

    fn encode(&mut self, _: Self::Item, _: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SubsetDecoder;

impl Decoder for SubsetDecoder {
    type Item = StreamAccessLogsMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let frame = src.copy_to_bytes(src.remaining());
        StreamAccessLogsMessage::decode(frame)
            .map(Some)
            .map_err(|e| {
                Status::invalid_argument(format!("malformed StreamAccessLogsMessage: {e}"))
            })
    }
}
