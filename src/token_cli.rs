//! `relay token`: the operators' and tests' token helper. `issue` signs an
//! HS256 token with `--jwt-secret` (or `--secret`) and prints it; `check`
//! says whether a node started with the given flags would accept a token,
//! and why not. `check` verifies the signature and the claims only: whether
//! the user was revoked (or, in token mode, has an account) is the node's
//! business at the handshake.

use clap::Args;

use crate::auth::jwt::{issue_hs256, IssueRequest};
use crate::auth::Verifier;
use crate::config::ServeArgs;

/// `relay token issue`.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// The user name (`sub`).
    #[arg(long)]
    pub user: String,
    /// Lifetime in seconds (`exp` = now + TTL).
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Rooms (or prefixes ending in `*`) the user may join even when
    /// private, comma-separated (`rooms` claim).
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// `role` claim (`admin`: may moderate every room).
    #[arg(long)]
    pub role: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    pub issuer: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    pub audience: Option<String>,
    /// HS256 secret to sign with (the first entry of a rotation list).
    #[arg(
        long,
        env = "RELAY_JWT_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub jwt_secret: Option<Vec<String>>,
    /// relay's own login-token secret, when no `--jwt-secret` is given.
    #[arg(
        long,
        env = "RELAY_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secret: Option<Vec<String>>,
}

/// `relay token check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The token.
    pub token: String,
    /// The node's flags (`--auth`, `--jwt-*`, `--secret`, ...).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Runs `relay token issue`: prints the token; the exit status (0 or 2).
pub fn issue(args: IssueArgs) -> i32 {
    let secrets = args.jwt_secret.clone().or(args.secret.clone());
    let Some(secret) = secrets.as_ref().and_then(|s| s.first()) else {
        eprintln!("error: --jwt-secret (or --secret) is required to sign");
        return 2;
    };
    let flag = if args.jwt_secret.is_some() {
        "--jwt-secret"
    } else {
        "--secret"
    };
    if let Err(e) = crate::auth::check_secrets(flag, secrets.as_deref().unwrap_or_default()) {
        eprintln!("error: {e}");
        return 2;
    }
    let request = IssueRequest {
        user: args.user,
        ttl_secs: args.ttl,
        rooms: args.rooms,
        role: args.role,
        issuer: args.issuer,
        audience: args.audience,
    };
    match issue_hs256(secret, &request) {
        Ok(token) => {
            println!("{token}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// Runs `relay token check`: prints the verdict; 0 when accepted, 1 when
/// refused, 2 on a configuration error.
pub fn check(args: CheckArgs) -> i32 {
    let config = args.serve.settings;
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return 2;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let verifier = match crate::server::verifier(&config, &stop).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                println!("refused: a node in guest mode takes no tokens (give --auth token or --auth jwt)");
                return 1;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        stop.cancel();
        let verdict = match verifier.as_ref() {
            Verifier::Jwt(keys) => keys.check(&args.token).await,
            Verifier::Token(keys) => keys
                .verify(&args.token)
                .map_err(|_| "bad signature, expired, or not a login token of these --secret keys".to_owned()),
        };
        match verdict {
            Ok(v) => {
                let rooms = if v.rooms.is_empty() {
                    "-".to_owned()
                } else {
                    v.rooms.join(",")
                };
                println!(
                    "accepted: user={} exp={} role={} rooms={}",
                    v.sub,
                    v.exp,
                    v.role.as_deref().unwrap_or("-"),
                    rooms
                );
                0
            }
            Err(why) => {
                println!("refused: {why}");
                1
            }
        }
    })
}
