#!/usr/bin/perl
# Idempotent RT5 configuration for incident-gateway tests. Run as www-data:
#   perl -I/usr/share/request-tracker5/lib rt-configure.pl
use strict; use warnings;
use lib '/usr/share/request-tracker5/lib';
use RT -init;

my $root_pw  = $ENV{RT_ROOT_PASSWORD} // 'password';
my $gw_pw    = $ENV{RT_GATEWAY_PASSWORD} // 'gateway-soc-pw';
my $tok_hex  = $ENV{RT_TOKEN_HEX} or die "RT_TOKEN_HEX required (32 hex chars)";
my $gw_hex   = $ENV{RT_GATEWAY_TOKEN_HEX} or die "RT_GATEWAY_TOKEN_HEX required";
my $out      = $ENV{RT_ENV_OUT} or die "RT_ENV_OUT required";
my $url      = $ENV{RT_URL} // 'http://127.0.0.1:8080';
my $cf_name  = 'Correlation key';
my $su = RT->SystemUser;
sub ok { my ($r, $m) = @_; die "failed: $m\n" unless $r; }

my $root = RT::User->new($su); $root->Load('root') or die;
ok($root->SetPassword($root_pw)) unless $root->IsPassword($root_pw);

my $q = RT::Queue->new($su); $q->Load('General');
unless ($q->id) { ok($q->Create(Name => 'General', Description => 'Default queue')) }

my $cf = RT::CustomField->new($su);
$cf->LoadByName(Name => $cf_name, LookupType => RT::Ticket->CustomFieldLookupType);
unless ($cf->id) {
    ok($cf->Create(Name => $cf_name, Type => 'Freeform', MaxValues => 1,
                   LookupType => RT::Ticket->CustomFieldLookupType,
                   Description => 'incident-gateway correlation key'));
}
ok($cf->AddToObject($q)) unless $cf->IsAdded($q->id);

# unprivileged mail senders may open/answer/comment tickets in General
my $everyone = RT::Group->new($su); $everyone->LoadSystemInternalGroup('Everyone');
for my $right (qw(CreateTicket ReplyToTicket CommentOnTicket SeeCustomField)) {
    $everyone->PrincipalObj->GrantRight(Right => $right, Object => $q)
        unless $everyone->PrincipalObj->HasRight(Right => $right, Object => $q);
}

# privileged gateway user (mail sender gateway@soc.example)
my $gw = RT::User->new($su); $gw->LoadByEmail('gateway@soc.example');
unless ($gw->id) {
    ok($gw->Create(Name => 'gateway', EmailAddress => 'gateway@soc.example',
                   RealName => 'Incident Gateway', Privileged => 1));
}
ok($gw->SetPrivileged(1)) unless $gw->Privileged;
ok($gw->SetPassword($gw_pw)) unless $gw->IsPassword($gw_pw);
for my $right (qw(SeeQueue ShowTicket CreateTicket ReplyToTicket CommentOnTicket ModifyTicket
                  OwnTicket TakeTicket SeeCustomField ModifyCustomField ShowTicketComments Watch)) {
    $gw->PrincipalObj->GrantRight(Right => $right, Object => $q)
        unless $gw->PrincipalObj->HasRight(Right => $right, Object => $q);
}
$gw->PrincipalObj->GrantRight(Right => 'ManageAuthTokens', Object => RT->System)
    unless $gw->PrincipalObj->HasRight(Right => 'ManageAuthTokens', Object => RT->System);

# fixed (known) REST2 auth tokens: "1-<userid>-<32hex>"
sub ensure_token {
    my ($user, $hex, $desc) = @_;
    my $toks = RT::AuthTokens->new($su);
    $toks->LimitOwner(VALUE => $user->id);
    while (my $t = $toks->Next) {
        next unless $t->Description eq $desc;
        return "1-" . $user->id . "-$hex" if $t->IsToken($hex);
        $t->Delete;
    }
    no warnings 'redefine';
    local *RT::AuthToken::_GenerateToken = sub { $hex };
    my $t = RT::AuthToken->new($su);
    my ($id, $msg, $auth) = $t->Create(Owner => $user->id, Description => $desc);
    die "token: $msg\n" unless $id;
    return $auth;
}
my $root_tok = ensure_token($root, $tok_hex, 'incident-gateway');
my $gw_tok   = ensure_token($gw, $gw_hex, 'incident-gateway');

open(my $fh, '>', $out) or die "$out: $!";
print $fh <<"ENV";
RT_URL=$url
RT_TOKEN=$root_tok
RT_NAME=@{[RT->Config->Get('rtname')]}
RT_QUEUE=General
RT_QUEUE_ID=@{[$q->id]}
RT_CF_NAME='$cf_name'
RT_CF_ID=@{[$cf->id]}
RT_ROOT_USER=root
RT_ROOT_PASSWORD=$root_pw
RT_GATEWAY_USER=gateway
RT_GATEWAY_EMAIL=gateway\@soc.example
RT_GATEWAY_PASSWORD=$gw_pw
RT_GATEWAY_TOKEN=$gw_tok
RT_CORRESPOND_ADDRESS=@{[RT->Config->Get('CorrespondAddress')]}
RT_COMMENT_ADDRESS=@{[RT->Config->Get('CommentAddress')]}
RT_NOTIFY_SMTP=127.0.0.1:2526
ENV
close $fh;
print "wrote $out\n";
