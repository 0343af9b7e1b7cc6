//! `ml login`, `ml logout`, `ml whoami`. The key is read without echo (or
//! from stdin), exchanged once for a session token, and only the token is
//! stored; neither is ever printed.

use super::Ctx;
use crate::cli::LoginArgs;
use crate::config::{ConfigFile, Profile};
use crate::error::{CliError, Result};
use crate::output::BOLD;
use fetchml_api_types::Whoami;
use serde::Serialize;
use std::io::{BufRead as _, IsTerminal as _};

/// `ml login --json`: who logged in where; never the token.
#[derive(Serialize)]
struct LoginOut<'a> {
    api: &'a str,
    expires_at: chrono::DateTime<chrono::Utc>,
    profile: &'a str,
    role: &'a str,
    user: &'a str,
}

/// The key: FETCHML_API_KEY, else stdin when asked or when it is not a
/// terminal, else a prompt on the terminal without echo.
fn read_key(args: &LoginArgs) -> Result<String> {
    if let Some(k) = std::env::var("FETCHML_API_KEY").ok().filter(|k| !k.is_empty())
        && !args.with_key_stdin
    {
        return Ok(k);
    }
    let key = if args.with_key_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| CliError::local("reading the key from stdin", e))?;
        line
    } else {
        rpassword::prompt_password("API key (fml_...): ").map_err(|e| CliError::local("reading the key", e))?
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(CliError::usage("no API key given"));
    }
    Ok(key)
}

pub async fn login(ctx: &Ctx, args: &LoginArgs) -> Result<()> {
    let key = read_key(args)?;
    let answer = ctx.api.login(&key).await?;
    let path = &ctx.target.config_path;
    let mut file = ConfigFile::load(path)?;
    let existing = file.profiles.remove(&ctx.target.profile).unwrap_or_default();
    let profile = Profile {
        api: ctx.target.api.clone(),
        token: Some(answer.token.clone()),
        expires_at: Some(answer.expires_at),
        user: Some(answer.user.to_string()),
        role: Some(answer.role.clone()),
        ca_file: ctx.target.ca_file.clone().or(existing.ca_file),
    };
    file.profiles.insert(ctx.target.profile.clone(), profile);
    file.save(path)?;
    let user = answer.user.to_string();
    if ctx.out.json {
        return ctx.out.json(&LoginOut {
            api: &ctx.target.api,
            expires_at: answer.expires_at,
            profile: &ctx.target.profile,
            role: &answer.role,
            user: &user,
        });
    }
    eprintln!(
        "Logged in to {} as {} ({}); the session lasts until {} (profile {:?}, stored in {}).",
        ctx.target.api,
        ctx.out.err_paint(&user, BOLD),
        answer.role,
        crate::output::time(answer.expires_at),
        ctx.target.profile,
        path.display()
    );
    Ok(())
}

pub async fn logout(ctx: &Ctx) -> Result<()> {
    let path = &ctx.target.config_path;
    let mut file = ConfigFile::load(path)?;
    let Some(profile) = file.profiles.get_mut(&ctx.target.profile) else {
        return Err(CliError::NotLoggedIn(format!("no profile {:?} to log out of", ctx.target.profile)));
    };
    if profile.token.is_none() {
        eprintln!("Profile {:?} holds no session; nothing to do.", ctx.target.profile);
        return Ok(());
    }
    let api = profile.api.clone();
    // Revoke with the stored token itself, whatever FETCHML_API_KEY says.
    let target = crate::config::Target {
        api: api.clone(),
        profile: ctx.target.profile.clone(),
        ca_file: profile.ca_file.clone().or(ctx.target.ca_file.clone()),
        credential: profile
            .token
            .clone()
            .map(|token| crate::config::Credential::Session { token, expires_at: profile.expires_at }),
        missing: String::new(),
        config_path: path.clone(),
    };
    let revoked = crate::client::Api::new(&target)?.post_no_content("/v1/auth/logout").await;
    // The local copy goes whatever the api said: an expired or already
    // revoked session (401) is logged out too.
    profile.token = None;
    profile.expires_at = None;
    file.save(path)?;
    match revoked {
        Ok(()) => eprintln!("Logged out of {api} (profile {:?}); the session is revoked.", ctx.target.profile),
        Err(CliError::Api { status: 401, .. }) => {
            eprintln!("Logged out of {api}; the session had already ended.")
        }
        Err(e) => {
            eprintln!("ml: the session was removed locally, but revoking it failed:");
            return Err(e);
        }
    }
    Ok(())
}

pub async fn whoami(ctx: &Ctx) -> Result<()> {
    let me: Whoami = ctx.api.get("/v1/auth/whoami").await?;
    if ctx.out.json {
        return ctx.out.json(&me);
    }
    println!("{} ({}) on {}", ctx.out.paint(me.user.as_str(), BOLD), me.role, ctx.target.api);
    if !me.groups.is_empty() {
        println!("groups: {}", me.groups.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    println!("permissions: {}", me.permissions.iter().cloned().collect::<Vec<_>>().join(" "));
    match &ctx.target.credential {
        Some(crate::config::Credential::Session { expires_at: Some(t), .. }) => {
            println!("session: profile {:?}, until {}", ctx.target.profile, crate::output::time(*t))
        }
        Some(crate::config::Credential::EnvKey(_)) => println!("credential: FETCHML_API_KEY"),
        _ => {}
    }
    Ok(())
}
