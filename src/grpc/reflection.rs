//! gRPC server reflection, v1 and v1alpha, answered from protox's descriptor set of the public
//! `.proto` files (`kvmesh_proto::PUBLIC_DESCRIPTOR_SET`), so `grpcurl` and `buf curl` can list
//! and describe every service without the `.proto` files. The two versions' messages are the
//! same bytes under different package names, so one implementation serves both paths.
//!
//! Pure: [`answer`] maps one request to one response; the router streams them.

use std::collections::HashMap;
use std::sync::OnceLock;

use kvmesh_proto::reflection::server_reflection_request::MessageRequest;
use kvmesh_proto::reflection::server_reflection_response::MessageResponse;
use kvmesh_proto::reflection::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
    ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
};
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

/// What reflection needs from the descriptor set, built once per process.
struct Index {
    /// File name → its serialized `FileDescriptorProto` and the names of its dependencies.
    files: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// Fully qualified symbol (no leading dot) → the file that defines it.
    symbols: HashMap<String, String>,
    /// Fully qualified service names, in file order.
    services: Vec<String>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        // Built by protox in kvmesh-proto's build script from our own .proto files: failing to
        // decode it is a build bug, caught by the tests below, never input from outside.
        let set = FileDescriptorSet::decode(kvmesh_proto::PUBLIC_DESCRIPTOR_SET)
            .expect("kvmesh-proto's descriptor set decodes");
        build(&set)
    })
}

fn build(set: &FileDescriptorSet) -> Index {
    let mut index = Index {
        files: HashMap::new(),
        symbols: HashMap::new(),
        services: Vec::new(),
    };
    for file in &set.file {
        let name = file.name().to_string();
        let package = file.package();
        let mut symbols = Vec::new();
        for service in &file.service {
            let full = qualify(package, service.name());
            index.services.push(full.clone());
            symbols.extend(
                service
                    .method
                    .iter()
                    .map(|m| format!("{full}.{}", m.name())),
            );
            symbols.push(full);
        }
        for message in &file.message_type {
            message_symbols(package, message, &mut symbols);
        }
        for e in &file.enum_type {
            enum_symbols(package, e, &mut symbols);
        }
        for symbol in symbols {
            index.symbols.insert(symbol, name.clone());
        }
        index
            .files
            .insert(name, (file.encode_to_vec(), file.dependency.clone()));
    }
    index
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    }
}

fn message_symbols(scope: &str, message: &DescriptorProto, out: &mut Vec<String>) {
    let full = qualify(scope, message.name());
    out.extend(message.field.iter().map(|f| format!("{full}.{}", f.name())));
    out.extend(
        message
            .oneof_decl
            .iter()
            .map(|o| format!("{full}.{}", o.name())),
    );
    for nested in &message.nested_type {
        message_symbols(&full, nested, out);
    }
    for e in &message.enum_type {
        enum_symbols(&full, e, out);
    }
    out.push(full);
}

/// An enum and its values; values are scoped beside the enum, as in C++.
fn enum_symbols(scope: &str, e: &EnumDescriptorProto, out: &mut Vec<String>) {
    out.extend(e.value.iter().map(|v| qualify(scope, v.name())));
    out.push(qualify(scope, e.name()));
}

/// Every service the server describes, fully qualified.
pub fn services() -> &'static [String] {
    &index().services
}

/// The response to one reflection request.
pub fn answer(req: ServerReflectionRequest) -> ServerReflectionResponse {
    let index = index();
    let response = match &req.message_request {
        Some(MessageRequest::ListServices(_)) => {
            MessageResponse::ListServicesResponse(ListServiceResponse {
                service: index
                    .services
                    .iter()
                    .map(|name| ServiceResponse { name: name.clone() })
                    .collect(),
            })
        }
        Some(MessageRequest::FileByFilename(name)) => {
            files_from(index, name).unwrap_or_else(|| not_found(format!("no file named {name:?}")))
        }
        Some(MessageRequest::FileContainingSymbol(symbol)) => {
            let symbol = symbol.trim_start_matches('.');
            index
                .symbols
                .get(symbol)
                .and_then(|file| files_from(index, file))
                .unwrap_or_else(|| not_found(format!("no symbol named {symbol:?}")))
        }
        Some(MessageRequest::FileContainingExtension(ext)) => not_found(format!(
            "no extension {} of {:?}: kvmesh's API defines no extensions",
            ext.extension_number, ext.containing_type
        )),
        Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
            let name = name.trim_start_matches('.');
            if index.symbols.contains_key(name) {
                MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: name.to_string(),
                    extension_number: Vec::new(),
                })
            } else {
                not_found(format!("no type named {name:?}"))
            }
        }
        None => MessageResponse::ErrorResponse(ErrorResponse {
            error_code: tonic::Code::InvalidArgument as i32,
            error_message: "the request names no query".to_string(),
        }),
    };
    ServerReflectionResponse {
        valid_host: req.host.clone(),
        original_request: Some(req),
        message_response: Some(response),
    }
}

/// `file` first, then every file it depends on, transitively, each once.
fn files_from(index: &Index, file: &str) -> Option<MessageResponse> {
    index.files.get(file)?;
    let mut order = vec![file.to_string()];
    let mut next = 0;
    while let Some(name) = order.get(next).cloned() {
        next += 1;
        if let Some((_, deps)) = index.files.get(&name) {
            for dep in deps {
                if !order.contains(dep) {
                    order.push(dep.clone());
                }
            }
        }
    }
    let file_descriptor_proto = order
        .iter()
        .filter_map(|name| index.files.get(name).map(|(bytes, _)| bytes.clone()))
        .collect();
    Some(MessageResponse::FileDescriptorResponse(
        FileDescriptorResponse {
            file_descriptor_proto,
        },
    ))
}

fn not_found(message: String) -> MessageResponse {
    MessageResponse::ErrorResponse(ErrorResponse {
        error_code: tonic::Code::NotFound as i32,
        error_message: message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::FileDescriptorProto;

    fn ask(request: MessageRequest) -> MessageResponse {
        answer(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        })
        .message_response
        .unwrap()
    }

    fn file_names(response: MessageResponse) -> Vec<String> {
        let MessageResponse::FileDescriptorResponse(files) = response else {
            panic!("not a file response: {response:?}");
        };
        files
            .file_descriptor_proto
            .iter()
            .map(|b| {
                FileDescriptorProto::decode(b.as_slice())
                    .unwrap()
                    .name()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn lists_every_public_service() {
        let MessageResponse::ListServicesResponse(list) =
            ask(MessageRequest::ListServices(String::new()))
        else {
            panic!("not a list");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "distributed_cache.DistributedCache",
                "distributed_cache.KvMesh",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
        );
    }

    #[test]
    fn finds_files_by_symbol_and_name() {
        let cases = [
            ("distributed_cache.KvMesh", "kvmesh_api.proto"),
            (".distributed_cache.KvMesh.MultiGet", "kvmesh_api.proto"),
            ("distributed_cache.KvGetResult.value", "kvmesh_api.proto"),
            ("distributed_cache.GetRequest", "distributed_cache.proto"),
            (
                "grpc.health.v1.HealthCheckResponse.ServingStatus",
                "grpc/health/v1/health.proto",
            ),
            (
                "grpc.health.v1.HealthCheckResponse.SERVING",
                "grpc/health/v1/health.proto",
            ),
        ];
        for (symbol, file) in cases {
            let got = file_names(ask(MessageRequest::FileContainingSymbol(symbol.into())));
            assert_eq!(got, [file], "{symbol}");
        }
        assert_eq!(
            file_names(ask(MessageRequest::FileByFilename(
                "distributed_cache.proto".into()
            ))),
            ["distributed_cache.proto"]
        );
        // The internal wire protocol is not described.
        let internal = ask(MessageRequest::FileByFilename("kvmesh/wire.proto".into()));
        assert!(matches!(internal, MessageResponse::ErrorResponse(e) if e.error_code == 5));
        let unknown = ask(MessageRequest::FileContainingSymbol("no.Such".into()));
        assert!(matches!(unknown, MessageResponse::ErrorResponse(e) if e.error_code == 5));
    }
}
