//! The tonic codec of the OTLP logs service: requests decode into the zero-copy subset types
//! (`subset`, generated from proto/meshaudit/v1/otlp_subset.proto), responses are
//! `opentelemetry-proto`'s `ExportLogsServiceResponse`.

use bytes::Buf;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::subset::ExportLogsServiceRequest;

#[derive(Debug, Default, Clone, Copy)]
pub struct OtlpCodec;

impl Codec for OtlpCodec {
    type Encode = ExportLogsServiceResponse;
    type Decode = ExportLogsServiceRequest;
    type Encoder = ResponseEncoder;
    type Decoder = SubsetDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        SubsetDecoder
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportLogsServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SubsetDecoder;

impl Decoder for SubsetDecoder {
    type Item = ExportLogsServiceRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let frame = src.copy_to_bytes(src.remaining());
        ExportLogsServiceRequest::decode(frame)
            .map(Some)
            .map_err(|e| {
                Status::invalid_argument(format!("malformed ExportLogsServiceRequest: {e}"))
            })
    }
}
